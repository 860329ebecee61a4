"""A/B model slots, encrypted at rest, with one atomically replaced active pointer.

Layout under ``root``::

    root/active              "a\\n" or "b\\n": the active slot, replaced by one atomic rename
    root/a/meta.json         slot metadata; present only once the slot is completely written
    root/a/model.sealed      the model, sealed (encrypted) by the ``Sealer``
    root/a/model.partial     an install in progress (never activated, removed on recovery)
    root/a/displaced/        the previous good version, set aside while a candidate is written
    root/b/...

Writing follows RAUC's *mark bad -> write -> mark good*: :meth:`SlotStore.begin_write` first
moves the target slot's ``meta.json`` and model out of the way (durably: into ``displaced/``
when they are a complete previous version, see :mod:`device_updater._displaced`), then streams
the sealed model into ``model.partial``; :meth:`SlotWriter.commit` checks the plaintext SHA-256
and length against the signed manifest values, fsyncs, renames to ``model.sealed`` and only then
writes ``meta.json``.
A slot without ``meta.json`` is *incomplete*: it is never activated and never rolled back to.

The pointer only ever moves to a complete slot whose sealed content has just been decrypted and
hashed (:meth:`SlotStore.switch_to` / :meth:`SlotStore.rollback`), so the active slot always
holds a model whose SHA-256 equals its signed manifest value. The writable slot is always the
inactive one; the previous version it held is set aside while a candidate is written and put
back if that candidate is rejected or rolled back (:meth:`SlotStore.restore_displaced`), deleted
once it is committed (:meth:`SlotStore.drop_displaced`): the device keeps the active model and
the previous good one.

At rest the model is sealed to the device's own P-256 key (:class:`BundleSealer`): a random
per-slot data key wrapped with HPKE, AES-256-GCM chunked stream (edgepkg.crypto). The sealed
stream's associated data binds the model's signed summary (name, version, sha256, length,
format), so editing ``meta.json`` makes decryption fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from device_updater import _displaced
from device_updater._exports import (  # re-exported: the agent cleans up at start-up
    _remove_tree,
    remove_stale_exports as remove_stale_exports,
)
from device_updater._fsutil import (
    atomic_write_bytes,
    file_lock,
    fsync_dir,
    read_limited,
    remove_durably,
)
from device_updater._slot_writer import META_SCHEMA as _META_SCHEMA, SlotWriter
from device_updater.errors import (
    IncompleteSlotError,
    NoActiveSlotError,
    SealError,
    SlotError,
    SlotIntegrityError,
    UntrustedDeviceInputError,
)

# The value objects and the sealer live in their own modules (the state machine imports the
# values without crypto); they are re-exported here because callers import them from slots.
from device_updater.sealing import BundleSealer, Sealer, SealingWriter
from device_updater.slot_values import (
    FORMATS,
    SLOT_NAMES,
    ModelSummary,
    ReleaseEvidence,
    SlotInfo,
    SlotName,
    SlotState,
    SlotsView,
    other_slot,
)
from edgepkg._atomic import atomic_output
from edgepkg.bundle import verify_signed_manifest
from edgepkg.errors import Error as EdgepkgError

__all__ = [
    "FORMATS",
    "MAX_META_BYTES",
    "SLOT_NAMES",
    "BundleSealer",
    "ModelSummary",
    "ReleaseEvidence",
    "Sealer",
    "SealingWriter",
    "SlotInfo",
    "SlotName",
    "SlotState",
    "SlotStore",
    "SlotWriter",
    "SlotsView",
    "TrustedKeys",
    "export_path",
    "other_slot",
    "remove_stale_exports",
]

MAX_META_BYTES = 64 * 1024
_EXT = {"onnx": ".onnx", "tflite": ".tflite", "tflm": ".tflite", "edgetpu": ".tflite",
        "tensorrt": ".engine", "raw": ".bin"}

log = logging.getLogger("edge_updater.slots")


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
                                  intact=intact, displaced=_displaced.present(self.root / n))
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
        remove_stale_exports(runtime_dir)
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
        remove_stale_exports(runtime_dir)
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
            self._set_aside_previous(target, summary)
        return SlotWriter(self, target, summary, release)  # type: ignore[arg-type]

    def _set_aside_previous(self, name: str, candidate: ModelSummary) -> None:
        """Before writing ``candidate`` into slot ``name`` (under the lock): move the previous good
        version it holds into ``displaced/`` (kept until the outcome), or clear what an earlier
        attempt at this candidate left while keeping the version already displaced."""
        slot_dir = self.root / name
        _displaced.settle(slot_dir, self._persisted)
        held = self.info(name)
        kept = _displaced.present(slot_dir)
        if held is not None and not (kept and held.sha256 == candidate.sha256):
            if kept:
                # Outcomes restore or drop what they displaced; one left here (a drop that
                # failed at commit) is older than the complete model the slot holds now.
                log.warning("slot %s: dropping a stale displaced version", name)
                _displaced.drop(slot_dir, self._persisted)
            _displaced.displace(slot_dir, self._persisted)
        else:
            # Empty, incomplete, or a copy of this candidate from an interrupted attempt.
            remove_durably(self._meta(name), self._sealed(name))

    # --- the previous good version while a candidate is in its slot (see _displaced) ---------

    def _persisted(self, what: str) -> None:
        """Called after every durable step of a displacement, restore or drop (a power-cut test
        overrides it to kill the process there)."""

    def has_displaced(self, name: str) -> bool:
        """Whether slot ``name`` has a previous version set aside during an install."""
        other_slot(name)
        return _displaced.present(self.root / name)

    def settle(self) -> None:
        """Finish or undo displacements, restores and drops a power cut interrupted (start-up
        recovery calls it before it looks at the slots)."""
        with self._lock():
            for n in SLOT_NAMES:
                _displaced.settle(self.root / n, self._persisted)

    def restore_displaced(self, name: str) -> bool:
        """Replace the abandoned candidate in non-active slot ``name`` by the previous version set
        aside when its write began (reject, rollback). False when nothing was set aside. The
        restored slot is read like any other: re-verified against its release-signed manifest."""
        other_slot(name)
        slot_dir = self.root / name
        with self._lock():
            _displaced.settle(slot_dir, self._persisted)
            if not _displaced.present(slot_dir):
                return False
            if name == self.active_name():
                raise SlotError(f"slot {name} is active: its previous version cannot be put back "
                                "over the running model")
            _displaced.restore(slot_dir, self._persisted)
        log.info("slot %s: previous version restored", name)
        return True

    def drop_displaced(self, name: str) -> bool:
        """Delete the version set aside in slot ``name`` (its candidate was committed: the other
        slot now holds the previous good version). False when nothing was set aside."""
        other_slot(name)
        slot_dir = self.root / name
        with self._lock():
            _displaced.settle(slot_dir, self._persisted)
            if not _displaced.present(slot_dir):
                return False
            _displaced.drop(slot_dir, self._persisted)
        return True

    def write(self, summary: ModelSummary, chunks: Iterable[bytes], *,
              slot: str | None = None, release: ReleaseEvidence | None = None) -> SlotInfo:
        """Write a whole model from plaintext ``chunks`` into the inactive slot and commit it."""
        with self.begin_write(summary, slot=slot, release=release) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def discard(self, name: str) -> None:
        """Remove a non-active slot's content (interrupted, rejected or rolled-back install); a
        version set aside in it (:meth:`restore_displaced`) is left alone."""
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


