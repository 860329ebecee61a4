"""Installing a verified bundle into an inactive slot: a full release, or a delta rebuilt from
the running model (shared by the agent and ``bench/device_install.py``).

Both stream: decrypt, decompress (or patch), hash and seal in one pass; the slot is committed
only when length and SHA-256 equal the signed candidate's.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from device_updater.errors import DeltaUnusableError as DeltaUnusableError  # re-exported
from device_updater.slots import (
    ModelSummary,
    ReleaseEvidence,
    SlotInfo,
    SlotStore,
    export_path,
)
from edgepkg.bundle import BundleInfo, BundleReader, DataKeySource

log = logging.getLogger("edge_updater")


def install_full(slots: SlotStore, slot: str, candidate: ModelSummary, bundle: Path, *,
                 keys: list[Any], trusted: list[Any],
                 data_key_source: DataKeySource | None = None) -> SlotInfo:
    """Decrypt a verified full bundle straight into ``slot``: one pass (decrypt, zstd, SHA-256
    and at-rest sealing as chunks stream), checked against the signed ``candidate`` on commit.
    ``data_key_source`` (a key grant, :func:`edgepkg.grants.grant_key_source`) is used instead
    of ``keys`` when the device is not a direct recipient of the bundle."""
    reader = BundleReader(bundle, keys=keys, trusted_keys=trusted,
                          data_key_source=data_key_source)
    return slots.write(candidate, reader.chunks(), slot=slot, release=_evidence(reader.info))


def _evidence(info: BundleInfo) -> ReleaseEvidence:
    """What the slot keeps to re-verify, at every later read, that a release key signed it."""
    return ReleaseEvidence(info.manifest_bytes, info.signature_block)


def install_delta(slots: SlotStore, slot: str, candidate: ModelSummary, bundle: Path, *,
                  keys: list[Any], trusted: list[Any], workdir: Path,
                  runtime_dir: Path | None = None,
                  data_key_source: DataKeySource | None = None) -> SlotInfo:
    """Rebuild ``candidate`` from the active model and a verified delta bundle into ``slot``.

    The (small) patch is decrypted into ``workdir`` (tmpfs). The base is the active model's
    plaintext export in ``runtime_dir`` when one is there (it is only used if its SHA-256 equals
    the active slot's signed value, checked by the delta engine), else the active slot is
    decrypted into ``workdir``. The rebuilt plaintext streams straight into the slot writer
    (hash + seal in the same pass, no temporary plaintext); the slot is committed only if
    length and SHA-256 match the signed ``candidate``.
    Raises ``DeltaUnusableError``/DeltaError/SlotError: the caller installs the full bundle instead.
    """
    from edgepkg.delta import DeltaBaseError, apply_delta_to, read_delta_header

    active = slots.active()
    if active is None:
        raise DeltaUnusableError("no active model to apply a delta to")
    patch = workdir / "patch"
    reader = BundleReader(bundle, keys=keys, trusted_keys=trusted,
                          data_key_source=data_key_source)
    with open(patch, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.writelines(reader.chunks())
    header = read_delta_header(patch)
    if header.old_sha256 != active.sha256 or header.old_length != active.summary.length:
        raise DeltaUnusableError("the delta is not based on the running model")
    bases: list[Path | None] = []
    if runtime_dir is not None:
        exported = export_path(active, runtime_dir)
        with contextlib.suppress(OSError):
            if exported.stat().st_size == active.summary.length:
                bases.append(exported)
    bases.append(None)  # last resort: decrypt the active slot
    for i, base in enumerate(bases):
        if base is None:
            base = slots.export_plaintext(active.name, workdir / "old")
        with open(patch, "rb") as delta, slots.begin_write(
                candidate, slot=slot, release=_evidence(reader.info)) as writer:
            try:
                apply_delta_to(base, delta, writer, expected_sha256=candidate.sha256,
                               expected_length=candidate.length, spool_dir=workdir)
            except DeltaBaseError:
                if i == len(bases) - 1:
                    raise
                log.info("runtime export is not the active model; decrypting the slot instead")
                continue
            return writer.commit()
    raise AssertionError("unreachable")

