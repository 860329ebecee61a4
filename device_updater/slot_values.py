"""The plain values of the A/B slots: slot names, a model's signed summary, slot snapshots.

Pure: no files, no crypto, no I/O library (a test imports it in a fresh interpreter and checks
``sys.modules``), so the state machine (:mod:`device_updater.state`) can decide on these values
without loading the slot store, the sealer or ``cryptography``. The store that reads and writes
slots is :mod:`device_updater.slots`; at-rest encryption is :mod:`device_updater.sealing`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from device_updater._fsutil import canonical_json
from device_updater.errors import SlotError, UntrustedDeviceInputError

SlotName = Literal["a", "b"]
SLOT_NAMES: tuple[SlotName, SlotName] = ("a", "b")
FORMATS = ("tensorrt", "edgetpu", "tflm", "tflite", "onnx", "raw")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,64}$")


def other_slot(name: str) -> SlotName:
    """The other slot's name (``a`` <-> ``b``)."""
    if name == "a":
        return "b"
    if name == "b":
        return "a"
    raise SlotError(f"no slot named {name!r} (slots are 'a' and 'b')")


# --- the signed summary of a model -----------------------------------------------------------


@dataclass(frozen=True)
class ModelSummary:
    """The signed facts about one model version the device relies on.

    Built from a verified bundle's ``Manifest.summary()`` or a TUF target's
    ``custom["edgepkg"]`` (both signed): the plaintext SHA-256 and length are what every slot
    write and switch is checked against; ``policy`` is the signed validation policy.
    """

    name: str
    version: str
    sha256: str
    length: int
    format: str
    policy: dict[str, Any] | None = None
    requirements: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ModelSummary:
        """Parse a manifest summary / TUF custom dict (hostile input: every field is checked).

        Accepts ``sha256``/``length`` or ``plaintext_sha256``/``plaintext_length``.
        Raises :class:`UntrustedDeviceInputError` on anything malformed.
        """
        if not isinstance(data, Mapping):
            raise UntrustedDeviceInputError("model summary must be a JSON object")
        sha = data.get("sha256", data.get("plaintext_sha256"))
        length = data.get("length", data.get("plaintext_length"))
        name, version, fmt = data.get("name"), data.get("version"), data.get("format")
        policy = data.get("policy")
        req = data.get("requirements") or {}
        if not isinstance(name, str) or not _NAME.match(name):
            raise UntrustedDeviceInputError(f"model summary has a bad name {name!r}")
        if not isinstance(version, str) or not _VERSION.match(version):
            raise UntrustedDeviceInputError(f"model summary has a bad version {version!r}")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise UntrustedDeviceInputError("model summary sha256 must be 64 lowercase hex digits")
        if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length < 1 << 44:
            raise UntrustedDeviceInputError(f"model summary has a bad length {length!r}")
        if fmt not in FORMATS:
            raise UntrustedDeviceInputError(f"model summary has an unknown format {fmt!r}")
        if policy is not None and not isinstance(policy, Mapping):
            raise UntrustedDeviceInputError("model summary policy must be an object or null")
        if not isinstance(req, Mapping):
            raise UntrustedDeviceInputError("model summary requirements must be an object")
        return cls(
            name=name, version=version, sha256=sha, length=length, format=str(fmt),
            policy=dict(policy) if policy is not None else None, requirements=dict(req),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "sha256": self.sha256,
            "length": self.length, "format": self.format, "policy": self.policy,
            "requirements": self.requirements,
        }

    def binding(self) -> bytes:
        """Bytes that bind sealed slot content to this summary (used as AEAD associated data)."""
        core = {k: getattr(self, k) for k in ("name", "version", "sha256", "length", "format")}
        return hashlib.sha256(b"edgepkg-slot-v1\n" + canonical_json(core)).digest()


# --- slot snapshots --------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotInfo:
    """A completely written slot: which model it holds, per its signed summary."""

    name: SlotName
    summary: ModelSummary
    sealed_length: int
    written_at: float

    @property
    def model(self) -> str:
        return self.summary.name

    @property
    def version(self) -> str:
        return self.summary.version

    @property
    def sha256(self) -> str:
        return self.summary.sha256

    @property
    def format(self) -> str:
        return self.summary.format


@dataclass(frozen=True)
class SlotState:
    """One slot as seen by recovery: complete (meta present, sizes right) and, if checked,
    intact."""

    name: SlotName
    info: SlotInfo | None  # None: empty or incomplete
    partial: bool  # an interrupted write left data behind
    intact: bool  # complete and (deep check) decrypts to the signed sha256
    # A previous version was set aside (``displaced/``) when a candidate's write began here.
    displaced: bool = False

    @property
    def complete(self) -> bool:
        return self.info is not None


@dataclass(frozen=True)
class SlotsView:
    """A snapshot of both slots and the pointer, the plain value ``recovery_action`` decides on."""

    active: SlotName | None
    slots: Mapping[str, SlotState]

    def intact(self, name: str | None) -> bool:
        return name is not None and name in self.slots and self.slots[name].intact

    def complete(self, name: str | None) -> bool:
        return name is not None and name in self.slots and self.slots[name].complete


@dataclass(frozen=True)
class ReleaseEvidence:
    """The release-signed manifest (and its signature block) a slot's model came from.

    Kept beside the sealed model and re-verified against the token-held release keys every time
    the slot is read, so a slot forged by someone who can write the state directory (and knows
    the device's *public* key, enough to seal) is never activated or served.
    """

    manifest: bytes
    signature_block: bytes

    def to_meta(self) -> dict[str, str]:
        return {"manifest": base64.b64encode(self.manifest).decode(),
                "signature": base64.b64encode(self.signature_block).decode()}

    @classmethod
    def from_meta(cls, data: object) -> ReleaseEvidence:
        if not isinstance(data, Mapping):
            raise UntrustedDeviceInputError("slot has no release-signed manifest")
        try:
            return cls(base64.b64decode(data["manifest"], validate=True),
                       base64.b64decode(data["signature"], validate=True))
        except (KeyError, TypeError, ValueError) as exc:
            raise UntrustedDeviceInputError(f"slot release evidence is malformed: {exc}") from None
