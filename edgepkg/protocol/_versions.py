"""Semantic versions (SemVer 2.0.0): the one parser and ordering used by every wing.

Release manifests, TUF target names, rollouts and the device's downgrade rule all compare
versions; they must agree on what a version is and which of two is newer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from edgepkg.errors import ProtocolError

_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
MAX_VERSION_CHARS = 64

PreKey = tuple[tuple[int, int, str], ...]
VersionKey = tuple[int, int, int, int, PreKey]


class InvalidVersionError(ProtocolError, ValueError):
    """A string is not a semantic version (also a ValueError for plain callers)."""


@total_ordering
@dataclass(frozen=True, slots=True, eq=False)
class Version:
    """A parsed semantic version; ordering is SemVer precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        if not isinstance(text, str) or len(text) > MAX_VERSION_CHARS:
            raise InvalidVersionError(
                f"{str(text)[:80]!r} is not a semantic version", field="version"
            )
        m = _SEMVER_RE.match(text)
        if m is None:
            raise InvalidVersionError(
                f"{text!r} is not a semantic version (expected e.g. 1.4.0 or 2.0.0-rc.1)",
                field="version",
            )
        pre = tuple(m[4].split(".")) if m[4] else ()
        return cls(int(m[1]), int(m[2]), int(m[3]), pre, m[5] or "")

    def key(self) -> VersionKey:
        """A tuple that sorts like SemVer precedence (a pre-release sorts before its release)."""
        if not self.prerelease:
            return (self.major, self.minor, self.patch, 1, ())
        ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0, ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __lt__(self, other: Version) -> bool:
        return self.key() < other.key()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


def version_key(text: str) -> VersionKey:
    """Sort key of a version string; raise :class:`InvalidVersionError`."""
    return Version.parse(text).key()


def is_version(text: object) -> bool:
    return isinstance(text, str) and len(text) <= MAX_VERSION_CHARS and bool(_SEMVER_RE.match(text))


def is_newer(candidate: str, running: str) -> bool:
    """True when ``candidate`` has higher precedence than ``running``."""
    return Version.parse(candidate) > Version.parse(running)
