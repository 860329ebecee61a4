"""A/B model slots, encrypted at rest, with one atomically replaced active pointer.

Layout under ``root``::

    root/active              "a\\n" or "b\\n": the active slot, replaced by one atomic rename
    root/a/meta.json         slot metadata; present only once the slot is completely written
    root/a/model.sealed      the model, sealed (encrypted) by the ``Sealer``
    root/a/model.partial     an install in progress (never activated, removed on recovery)
    root/b/...

Writing follows RAUC's *mark bad -> write -> mark good*: :meth:`SlotStore.begin_write` first
removes the target slot's ``meta.json`` (durably), then streams the sealed model into
``model.partial``; :meth:`SlotWriter.commit` checks the plaintext SHA-256 and length against the
signed manifest values, fsyncs, renames to ``model.sealed`` and only then writes ``meta.json``.
A slot without ``meta.json`` is *incomplete*: it is never activated and never rolled back to.

The pointer only ever moves to a complete slot whose sealed content has just been decrypted and
hashed (:meth:`SlotStore.switch_to` / :meth:`SlotStore.rollback`), so the active slot always
holds a model whose SHA-256 equals its signed manifest value. The writable slot is always the
inactive one, so the active model and the previous one are both kept until the next install.

At rest the model is sealed to the device's own P-256 key (:class:`BundleSealer`): a random
per-slot data key wrapped with HPKE, AES-256-GCM chunked stream (edgepkg.crypto). The sealed
stream's associated data binds the model's signed summary (name, version, sha256, length,
format), so editing ``meta.json`` makes decryption fail.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, Protocol, Self

from device_updater._fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    canonical_json,
    file_lock,
    fsync_dir,
    read_limited,
    remove_durably,
)
from device_updater.errors import (
    IncompleteSlotError,
    NoActiveSlotError,
    SealError,
    SlotError,
    SlotIntegrityError,
    UntrustedDeviceInputError,
)
from edgepkg import crypto
from edgepkg._atomic import atomic_output
from edgepkg.bundle import verify_signed_manifest
from edgepkg.errors import Error as EdgepkgError
from edgepkg.keys._types import RecipientKey

SlotName = Literal["a", "b"]
SLOT_NAMES: tuple[SlotName, SlotName] = ("a", "b")
FORMATS = ("tensorrt", "edgetpu", "tflm", "tflite", "onnx", "raw")
MAX_META_BYTES = 64 * 1024
_META_SCHEMA = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,64}$")
_EXT = {"onnx": ".onnx", "tflite": ".tflite", "tflm": ".tflite", "edgetpu": ".tflite",
        "tensorrt": ".engine", "raw": ".bin"}


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


# --- at-rest sealing -------------------------------------------------------------------------


class SealingWriter(Protocol):
    """Push plaintext in; sealed bytes go to the file the sealer was given."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Write the final (authenticated last) part. Must be called exactly once."""
        ...


class Sealer(Protocol):
    """Encrypts slot content at rest and decrypts it again (see :class:`BundleSealer`)."""

    def seal(self, out: BinaryIO, aad: bytes) -> SealingWriter:
        """Start a sealed stream written to ``out``, bound to ``aad``."""
        ...

    def unseal(self, src: BinaryIO, aad: bytes) -> Iterator[bytes]:
        """Yield authenticated plaintext chunks; raise :class:`SealError` on any mismatch."""
        ...


_SEAL_MAGIC = b"EPSLOT1\n"
_MAX_SEAL_HEADER = 16 * 1024


class _Feed:
    """An iterator fed by pushes; refuses to run dry mid-stream (the sealer looks ahead one)."""

    class _Dry(Exception):
        pass

    def __init__(self) -> None:
        self.items: deque[bytes] = deque()
        self.closed = False

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> bytes:
        if self.items:
            return self.items.popleft()
        if self.closed:
            raise StopIteration
        raise _Feed._Dry("sealer asked for more look-ahead than buffered")


class _BundleSealingWriter:
    def __init__(self, out: BinaryIO, data_key: bytes, aad: bytes, chunk_size: int) -> None:
        self._out = out
        self._chunk_size = chunk_size
        self._buf = bytearray()
        self._feed = _Feed()
        self._gen = crypto.seal_chunks(data_key, self._feed, aad)
        self._closed = False

    def _push(self, chunk: bytes) -> None:
        self._feed.items.append(chunk)
        # Keep >= 2 chunks buffered before pulling so a one-chunk look-ahead never runs dry.
        while len(self._feed.items) >= 2:
            self._out.write(next(self._gen))

    def write(self, data: bytes) -> None:
        if self._closed:
            raise SealError("write after close")
        mv = memoryview(data)
        size = self._chunk_size
        if self._buf:
            take = size - len(self._buf)
            self._buf += mv[:take]
            mv = mv[take:]
            if len(self._buf) < size:
                return
            self._push(bytes(self._buf))
            self._buf.clear()
        while len(mv) >= size:  # no quadratic copying for one huge write
            self._push(bytes(mv[:size]))
            mv = mv[size:]
        self._buf += mv

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._buf:
            self._feed.items.append(bytes(self._buf))
            self._buf.clear()
        self._feed.closed = True
        for part in self._gen:
            self._out.write(part)


class BundleSealer:
    """Seal slot content to the device's own P-256 key, edgepkg-bundle style.

    Sealed file: ``EPSLOT1\\n`` + u32 header length + JSON header (chunk size, HPKE-wrapped
    random data key, recipient key id) + the AES-256-GCM chunked stream of
    :func:`edgepkg.crypto.seal_chunks`. Both the HPKE ``info`` and the stream's associated data
    are bound to ``aad`` (the model's signed summary). Unsealing unwraps the data key through
    ``key.exchange`` (the ECDH runs inside the token for a PKCS#11 key).
    """

    def __init__(self, key: RecipientKey, *, chunk_size: int = 256 * 1024) -> None:
        if not 4096 <= chunk_size <= 16 << 20:
            raise SealError("chunk_size must be between 4 KiB and 16 MiB")
        self._key = key
        self._chunk_size = chunk_size

    @staticmethod
    def _info(aad: bytes) -> bytes:
        return b"edgepkg-slot-seal-v1\n" + aad

    def seal(self, out: BinaryIO, aad: bytes) -> SealingWriter:
        data_key = crypto.new_data_key()
        try:
            wrapped = crypto.wrap_data_key(data_key, self._key.public_key(), self._info(aad))
        except EdgepkgError as exc:
            raise SealError(f"cannot seal to the device key: {exc}") from exc
        header = canonical_json({
            "chunk_size": self._chunk_size,
            "key_id": self._key.key_id,
            "wrapped_key": base64.b64encode(wrapped).decode(),
            "aead": crypto.AEAD_NAME,
            "hpke": crypto.HPKE_SUITE_NAME,
        })
        out.write(_SEAL_MAGIC + struct.pack(">I", len(header)) + header)
        return _BundleSealingWriter(out, data_key, aad, self._chunk_size)

    def unseal(self, src: BinaryIO, aad: bytes) -> Iterator[bytes]:
        head = src.read(len(_SEAL_MAGIC) + 4)
        if len(head) != len(_SEAL_MAGIC) + 4 or not head.startswith(_SEAL_MAGIC):
            raise SealError("sealed slot file has no valid header (damaged or not a slot file)")
        (hlen,) = struct.unpack(">I", head[len(_SEAL_MAGIC):])
        if hlen > _MAX_SEAL_HEADER:
            raise SealError("sealed slot header is too large")
        try:
            header = json.loads(src.read(hlen))
            chunk_size = int(header["chunk_size"])
            wrapped = base64.b64decode(header["wrapped_key"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise SealError(f"sealed slot header is malformed: {exc}") from None
        if not 1 <= chunk_size <= 16 << 20:
            raise SealError("sealed slot header has a bad chunk size")
        try:
            data_key = crypto.unwrap_data_key(wrapped, self._key, self._info(aad))
            yield from crypto.open_chunks(data_key, src.read, chunk_size, aad)
        except EdgepkgError as exc:
            raise SealError(f"sealed slot content does not open with the device key: {exc}") from exc


# --- slots -----------------------------------------------------------------------------------


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
    """One slot as seen by recovery: complete (meta present, sizes right) and, if checked, intact."""

    name: SlotName
    info: SlotInfo | None  # None: empty or incomplete
    partial: bool  # an interrupted write left data behind
    intact: bool  # complete and (deep check) decrypts to the signed sha256

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


log = logging.getLogger("edge_updater.slots")


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


TrustedKeys = Callable[[], Sequence[Any]]


class SlotStore:
    """Two model slots ``a``/``b`` under ``root`` and the pointer naming the active one.

    ``sealer`` encrypts slot content at rest (:class:`BundleSealer` in production).
    ``trusted_keys`` returns the token-held release public keys: when given (the daemon always
    gives it), every write must carry the release-signed manifest and every read re-verifies it,
    taking the model's identity, SHA-256 and policy from that manifest, not from ``meta.json``.
    Without it (tools and unit tests) slots are trusted as written.
    All mutating operations take an exclusive lock (``root/.lock``) so the daemon and the CLI
    do not interleave; the kernel releases it if a process dies.
    """

    def __init__(self, root: Path, *, sealer: Sealer, trusted_keys: TrustedKeys | None = None
                 ) -> None:
        self.root = Path(root)
        self.sealer = sealer
        self._trusted_keys = trusted_keys
        self._trusted_cache: list[Any] | None = None
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for n in SLOT_NAMES:
            (self.root / n).mkdir(exist_ok=True, mode=0o700)

    # --- paths ---------------------------------------------------------------------------------

    @property
    def _pointer(self) -> Path:
        return self.root / "active"

    def _meta(self, name: str) -> Path:
        return self.root / name / "meta.json"

    def _sealed(self, name: str) -> Path:
        return self.root / name / "model.sealed"

    def _partial(self, name: str) -> Path:
        return self.root / name / "model.partial"

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / ".lock")

    # --- reading -------------------------------------------------------------------------------

    def active_name(self) -> SlotName | None:
        """The slot the pointer names, or ``None`` before the first install."""
        try:
            raw = read_limited(self._pointer, 64).decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SlotError(f"cannot read the active-slot pointer: {exc}") from exc
        if raw == "a":
            return "a"
        if raw == "b":
            return "b"
        # A damaged pointer: treat as "none"; recovery will point at an intact slot.
        return None

    def inactive_name(self) -> SlotName:
        """The slot an install writes to: never the active one."""
        active = self.active_name()
        return "a" if active is None else other_slot(active)

    def info(self, name: str) -> SlotInfo | None:
        """The slot's metadata if it is completely written, else ``None`` (empty/incomplete)."""
        other_slot(name)  # validates the name
        try:
            raw = read_limited(self._meta(name), MAX_META_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        try:
            meta = json.loads(raw)
            if meta.get("schema") != _META_SCHEMA or meta.get("complete") is not True:
                return None
            summary = ModelSummary.from_mapping(meta["summary"])
            if self._trusted_keys is not None:
                attested = self._attested(name, summary, meta.get("release"))
                if attested is None:
                    return None
                summary = attested
            sealed_length = meta["sealed_length"]
            if not isinstance(sealed_length, int) or sealed_length < 0:
                return None
            if self._sealed(name).stat().st_size != sealed_length:
                return None
            return SlotInfo(name=name, summary=summary, sealed_length=sealed_length,  # type: ignore[arg-type]
                            written_at=float(meta.get("written_at", 0.0)))
        except (ValueError, KeyError, TypeError, OSError, UntrustedDeviceInputError):
            return None

    @property
    def requires_release_evidence(self) -> bool:
        return self._trusted_keys is not None

    def _attested(self, name: str, summary: ModelSummary, release: object
                  ) -> ModelSummary | None:
        """The summary from the slot's release-signed manifest, or None (logged) if it does not
        verify with the trusted release keys or does not describe the sealed model."""
        try:
            evidence = ReleaseEvidence.from_meta(release)
            if self._trusted_cache is None:
                assert self._trusted_keys is not None
                self._trusted_cache = list(self._trusted_keys())
            manifest = verify_signed_manifest(evidence.manifest, evidence.signature_block,
                                              self._trusted_cache)
            signed = ModelSummary.from_mapping(manifest.summary())
        except EdgepkgError as exc:
            log.warning("slot %s is not trusted: %s", name, exc)
            return None
        if signed.binding() != summary.binding():
            log.warning("slot %s: meta.json does not match its release-signed manifest", name)
            return None
        return signed

    def active(self) -> SlotInfo | None:
        """The active slot's info, or ``None`` when no (complete) slot is active."""
        name = self.active_name()
        return self.info(name) if name else None

    def view(self, *, deep: bool = False) -> SlotsView:
        """Snapshot for recovery. ``deep`` decrypts and hashes each complete slot (slow, thorough);
        otherwise a complete slot (meta present, sealed size right) counts as intact."""
        states: dict[str, SlotState] = {}
        for n in SLOT_NAMES:
            info = self.info(n)
            intact = info is not None
            if info is not None and deep:
                try:
                    self.verify(n)
                except SlotError:
                    intact = False
            states[n] = SlotState(name=n, info=info, partial=self._partial(n).exists(),
                                  intact=intact)
        return SlotsView(active=self.active_name(), slots=states)

    def checkin_view(self) -> dict[str, Any]:
        """The ``models[<name>]`` value of the server check-in body (see the HTTP contract)."""
        slots: dict[str, Any] = {}
        for n in SLOT_NAMES:
            info = self.info(n)
            slots[n] = None if info is None else {"version": info.version, "sha256": info.sha256}
        return {"active_slot": self.active_name(), "slots": slots}

    def _require(self, name: str) -> SlotInfo:
        info = self.info(name)
        if info is None:
            raise IncompleteSlotError(f"slot {name} holds no completely written model")
        return info

    def open_plaintext(self, name: str | None = None) -> Iterator[bytes]:
        """Stream the decrypted model of slot ``name`` (default: the active one).

        The SHA-256 and length are checked as the stream ends: a consumer must read to the end,
        and gets :class:`SlotIntegrityError` there if the content does not match its signed value.
        """
        if name is None:
            name = self.active_name()
            if name is None:
                raise NoActiveSlotError("no model is installed yet")
        info = self._require(name)
        return self._stream(info)

    def _stream(self, info: SlotInfo) -> Iterator[bytes]:
        h = hashlib.sha256()
        n = 0
        try:
            with open(self._sealed(info.name), "rb") as fh:
                for chunk in self.sealer.unseal(fh, info.summary.binding()):
                    n += len(chunk)
                    if n > info.summary.length:
                        raise SlotIntegrityError(
                            f"slot {info.name} decrypts to more than the signed length")
                    h.update(chunk)
                    yield chunk
        except SealError as exc:
            raise SlotIntegrityError(f"slot {info.name}: {exc}") from exc
        except OSError as exc:
            raise SlotIntegrityError(f"slot {info.name} cannot be read: {exc}") from exc
        if n != info.summary.length or h.hexdigest() != info.summary.sha256:
            raise SlotIntegrityError(
                f"slot {info.name} ({info.model} {info.version}) does not match its signed "
                f"SHA-256/length: the stored model is damaged")

    def verify(self, name: str) -> SlotInfo:
        """Decrypt and hash slot ``name``; return its info or raise (Incomplete/SlotIntegrity)."""
        info = self._require(name)
        for _ in self._stream(info):
            pass
        return info

    def export_plaintext(self, name: str | None, runtime_dir: Path) -> Path:
        """Write slot ``name``'s (default: active) plaintext model into ``runtime_dir``.

        ``runtime_dir`` is meant to be a tmpfs: the plaintext never lands on persistent storage.
        The file (mode 0600, named ``<model><ext>``) appears atomically and only after the
        SHA-256 matched; a mismatch leaves the previous export in place and raises.
        """
        if name is None:
            name = self.active_name()
            if name is None:
                raise NoActiveSlotError("no model is installed yet")
        info = self._require(name)
        runtime_dir = Path(runtime_dir)
        runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _remove_stale_exports(runtime_dir)
        dest = export_path(info, runtime_dir)
        # Written in a private ``.export-<pid>-*`` dir, then renamed into place: a process killed
        # mid-export leaves no plaintext beside the app's model that nobody would clean up.
        scratch = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}-", dir=runtime_dir))
        try:
            with atomic_output(scratch / dest.name, 0o600) as fh:
                for chunk in self._stream(info):
                    fh.write(chunk)
            os.replace(scratch / dest.name, dest)
            fsync_dir(runtime_dir)
        finally:
            _remove_tree(scratch)
        return dest

    @contextlib.contextmanager
    def exported(self, name: str | None, runtime_dir: Path) -> Iterator[Path]:
        """Export like :meth:`export_plaintext` into a private sub-directory; delete it afterwards
        (what validation uses to give a runner a model file)."""
        runtime_dir = Path(runtime_dir)
        _remove_stale_exports(runtime_dir)
        sub = runtime_dir / f".export-{os.getpid()}-{name or 'active'}"
        try:
            yield self.export_plaintext(name, sub)
        finally:
            _remove_tree(sub)

    # --- writing -------------------------------------------------------------------------------

    def begin_write(self, summary: ModelSummary, *, slot: str | None = None,
                    release: ReleaseEvidence | None = None) -> SlotWriter:
        """Start writing ``summary``'s model into the inactive slot (or ``slot``, never the active).

        The slot is marked incomplete *before* any byte is written. Use as a context manager:
        leaving the block without :meth:`SlotWriter.commit` aborts and removes the partial data.
        """
        target = slot or self.inactive_name()
        other_slot(target)
        if target == self.active_name():
            raise SlotError(f"slot {target} is active; an install writes only the inactive slot")
        if self._trusted_keys is not None:
            if release is None:
                raise SlotError("an install must carry the release-signed manifest of the model")
            try:
                signed = ModelSummary.from_mapping(verify_signed_manifest(
                    release.manifest, release.signature_block, list(self._trusted_keys())
                ).summary())
            except EdgepkgError as exc:
                raise SlotIntegrityError(f"release manifest does not verify: {exc}") from exc
            if signed.binding() != summary.binding():
                raise SlotIntegrityError("the model to install is not the one its manifest signs")
        with self._lock():
            remove_durably(self._meta(target), self._sealed(target))
        return SlotWriter(self, target, summary, release)  # type: ignore[arg-type]

    def write(self, summary: ModelSummary, chunks: Iterable[bytes], *,
              slot: str | None = None, release: ReleaseEvidence | None = None) -> SlotInfo:
        """Write a whole model from plaintext ``chunks`` into the inactive slot and commit it."""
        with self.begin_write(summary, slot=slot, release=release) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def discard(self, name: str) -> None:
        """Remove a non-active slot's content (interrupted, rejected or rolled-back install)."""
        other_slot(name)
        with self._lock():
            if name == self.active_name():
                raise SlotError(f"slot {name} is active and cannot be discarded")
            remove_durably(self._meta(name), self._sealed(name), self._partial(name))

    def switch_to(self, name: str) -> SlotInfo:
        """Make slot ``name`` active, after decrypting and hashing it (one atomic rename)."""
        info = self.verify(name)
        with self._lock():
            atomic_write_bytes(self._pointer, f"{name}\n".encode(), 0o600)
        return info

    def rollback(self) -> SlotInfo:
        """Point back at the other slot, if it holds a complete model that verifies."""
        active = self.active_name()
        if active is None:
            raise NoActiveSlotError("no model is installed yet; nothing to roll back from")
        target = other_slot(active)
        if self.info(target) is None:
            raise SlotError(f"cannot roll back: slot {target} holds no complete model")
        return self.switch_to(target)


def export_path(info: SlotInfo, runtime_dir: Path) -> Path:
    """Where :meth:`SlotStore.export_plaintext` puts ``info``'s model in ``runtime_dir``.

    The file there may be stale or changed by others: check its SHA-256 before relying on it.
    """
    return Path(runtime_dir) / f"{info.model}{_EXT.get(info.format, '.bin')}"


def _remove_tree(sub: Path) -> None:
    if not sub.is_dir():
        return
    for p in sub.iterdir():
        with contextlib.suppress(OSError):
            p.unlink()
    with contextlib.suppress(OSError):
        sub.rmdir()


def _remove_stale_exports(runtime_dir: Path) -> None:
    """Remove plaintext exports left by a process that died (its pid no longer exists)."""
    if not runtime_dir.is_dir():
        return
    for sub in runtime_dir.glob(".export-*-*"):
        try:
            pid = int(sub.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _remove_tree(sub)
        except PermissionError:
            pass


class SlotWriter:
    """Streams one model into a slot; see :meth:`SlotStore.begin_write`."""

    def __init__(self, store: SlotStore, name: SlotName, summary: ModelSummary,
                 release: ReleaseEvidence | None = None) -> None:
        self.store = store
        self.name = name
        self.summary = summary
        self.release = release
        self._hash = hashlib.sha256()
        self._length = 0
        self._done = False
        path = store._partial(name)
        self._fh: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in commit/abort
        os.fchmod(self._fh.fileno(), 0o600)
        try:
            self._sealing = store.sealer.seal(self._fh, summary.binding())
        except BaseException:
            self._fh.close()
            raise

    @property
    def bytes_written(self) -> int:
        """Plaintext bytes received so far."""
        return self._length

    def write(self, data: bytes) -> None:
        if self._done:
            raise SlotError("write after commit/abort")
        self._length += len(data)
        if self._length > self.summary.length:
            self.abort()
            raise SlotIntegrityError(
                f"model is longer than its signed length {self.summary.length}; install refused")
        self._hash.update(data)
        self._sealing.write(data)

    def commit(self) -> SlotInfo:
        """Check SHA-256 + length against the signed summary, seal, fsync, mark the slot complete.

        Raises :class:`SlotIntegrityError` (and removes the partial data) on a mismatch.
        """
        if self._done:
            raise SlotError("commit after commit/abort")
        if self._length != self.summary.length or self._hash.hexdigest() != self.summary.sha256:
            self.abort()
            raise SlotIntegrityError(
                f"model for {self.summary.name} {self.summary.version} does not match its signed "
                f"SHA-256/length (got {self._length} bytes); install refused")
        self._sealing.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        sealed_length = self._fh.tell()
        self._fh.close()
        self._done = True
        store, n = self.store, self.name
        written_at = time.time()
        with store._lock():
            os.replace(store._partial(n), store._sealed(n))
            fsync_dir(store.root / n)
            meta: dict[str, Any] = {
                "schema": _META_SCHEMA, "complete": True, "summary": self.summary.to_dict(),
                "sealed_length": sealed_length, "written_at": written_at,
            }
            if self.release is not None:
                meta["release"] = self.release.to_meta()
            atomic_write_json(store._meta(n), meta)
        return SlotInfo(name=n, summary=self.summary, sealed_length=sealed_length,
                        written_at=written_at)

    def abort(self) -> None:
        """Drop the partial data; the slot stays incomplete."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._fh.close()
        remove_durably(self.store._partial(self.name))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()
