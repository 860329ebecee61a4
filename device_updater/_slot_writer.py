"""The writer that streams one model into a slot (:meth:`SlotStore.begin_write`).

Split from :mod:`device_updater.slots` (which re-exports it) to keep that module small; it uses
the store's paths and lock, and is only ever made by the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Self

from device_updater._fsutil import atomic_write_json, fsync_dir, remove_durably
from device_updater.errors import SlotError, SlotIntegrityError
from device_updater.slot_values import ModelSummary, ReleaseEvidence, SlotInfo, SlotName

if TYPE_CHECKING:
    from device_updater.slots import SlotStore

META_SCHEMA = 1


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
                "schema": META_SCHEMA, "complete": True, "summary": self.summary.to_dict(),
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
