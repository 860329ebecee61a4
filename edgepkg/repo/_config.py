"""Repository configuration: ``REPO/edgepkg-repo.json``.

Holds key *references* (PEM paths or ``pkcs11:`` URIs) and public keys, never private key
material or PINs: thresholds, expiry periods, release (bundle-signing) public keys, the delta
settings and the release-archive key reference.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepkg._atomic import atomic_write_bytes
from edgepkg.errors import RepoError

from ._policy import DEFAULT_EXPIRES, TOP_ROLES, parse_duration

CONFIG_NAME = "edgepkg-repo.json"
CONFIG_FORMAT = 1
MAX_CONFIG_BYTES = 4 * 1024 * 1024


@dataclass
class KeyRef:
    keyid: str
    ref: str


@dataclass
class PublicKeyEntry:
    keyid: str
    pem: str


@dataclass
class RoleConfig:
    keys: list[KeyRef]
    threshold: int
    expires: str  # a duration, e.g. "90d"


@dataclass
class RepoConfig:
    roles: dict[str, RoleConfig]
    release_keys: list[PublicKeyEntry] = field(default_factory=list)
    release_signer: str | None = None  # reference of a release key that signs delta bundles
    archive_key: KeyRef | None = None  # release-archive recipient key (private half: a ref)
    recipients: list[PublicKeyEntry] = field(default_factory=list)  # known recipient publics
    delta_k: int = 2
    delta_margin: float = 0.9

    def role(self, name: str) -> RoleConfig:
        return self.roles[name]

    def to_json(self) -> bytes:
        data = {"format": CONFIG_FORMAT, **asdict(self)}
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RepoConfig:
        try:
            data = json.loads(raw)
            if data.get("format") != CONFIG_FORMAT:
                raise RepoError(f"unsupported repository config format {data.get('format')!r}")
            roles = {
                name: RoleConfig(
                    keys=[KeyRef(**k) for k in r["keys"]],
                    threshold=int(r["threshold"]),
                    expires=str(r["expires"]),
                )
                for name, r in data["roles"].items()
            }
            if set(roles) != set(TOP_ROLES):
                raise RepoError("repository config must name exactly the four top-level roles")
            for r in roles.values():
                parse_duration(r.expires)
            archive = data.get("archive_key")
            return cls(
                roles=roles,
                release_keys=[PublicKeyEntry(**k) for k in data.get("release_keys", [])],
                release_signer=data.get("release_signer"),
                archive_key=KeyRef(**archive) if archive else None,
                recipients=[PublicKeyEntry(**k) for k in data.get("recipients", [])],
                delta_k=int(data.get("delta_k", 2)),
                delta_margin=float(data.get("delta_margin", 0.9)),
            )
        except RepoError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RepoError(f"repository config is malformed: {exc}") from exc


def default_expires(role: str) -> str:
    return DEFAULT_EXPIRES[role]


def config_path(repo_dir: str | os.PathLike[str]) -> Path:
    return Path(repo_dir) / CONFIG_NAME


def load_config(repo_dir: str | os.PathLike[str]) -> RepoConfig:
    path = config_path(repo_dir)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise RepoError(f"{repo_dir} is not an edgepkg repository (no {CONFIG_NAME}): run "
                        "`edgepkg repo init` first") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise RepoError(f"{path} is too large")
    return RepoConfig.from_json(raw)


def save_config(repo_dir: str | os.PathLike[str], config: RepoConfig) -> None:
    atomic_write_bytes(config_path(repo_dir), config.to_json(), mode=0o644)


def as_dict(config: RepoConfig) -> dict[str, Any]:
    return asdict(config)
