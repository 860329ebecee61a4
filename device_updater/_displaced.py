"""The previous good version set aside while a candidate is written over its slot.

A slot is its ``meta.json`` (the *complete* marker, written last) and ``model.sealed``. Writing a
candidate into the inactive slot used to delete the previous good version P it held; instead
:func:`displace` moves P's two files into ``<slot>/displaced/`` by rename (same directory tree,
so same file system: no copy, no extra space beyond P's own), and at the outcome P is either put
back (:func:`restore`: reject, rollback) or deleted (:func:`drop`: commit).

Every step is one ``rename``/``unlink`` followed by an fsync of the directories it changed, so a
power cut leaves one of a few states, each named by which directory exists:

``<slot>/.displacing/``  a displacement was cut short: :func:`settle` moves the files back into
                         the slot (the writer had not started, so nothing else is there);
``<slot>/.restoring/``   a restore was cut short (the candidate was already removed): settle
                         finishes it, ``meta.json`` last;
``<slot>/displaced/`` without ``meta.json``
                         a drop was cut short (it removes ``meta.json`` first): settle finishes it;
``<slot>/displaced/meta.json`` present
                         P is set aside, complete; what happens to it depends on the update state
                         (:mod:`device_updater.recovery` decides: restore, keep or drop).

These helpers do no locking; :class:`~device_updater.slots.SlotStore` calls them under its lock.
``step`` is called after each durable step with a short label (power-cut tests kill there).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from device_updater._fsutil import fsync_dir, remove_durably

__all__ = ["DISPLACED", "Step", "displace", "drop", "present", "restore", "settle"]

DISPLACED = "displaced"
_DISPLACING = ".displacing"
_RESTORING = ".restoring"
META = "meta.json"
SEALED = "model.sealed"
PARTIAL = "model.partial"

Step = Callable[[str], None]

log = logging.getLogger("edge_updater.slots")


def present(slot_dir: Path) -> bool:
    """Whether a previous version is set aside, completely, under ``slot_dir``."""
    return (slot_dir / DISPLACED / META).is_file()


def _move(src: Path, dst: Path, step: Step, label: str) -> None:
    """Rename ``src`` to ``dst`` and make it durable (fsync both parent directories)."""
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)
    step(label)


def _move_into_slot(stage: Path, slot_dir: Path, step: Step, what: str) -> None:
    """Move P's files from ``stage`` into the slot, ``meta.json`` last (the slot becomes complete
    only once its sealed model is in place), then remove the emptied ``stage``."""
    for name in (SEALED, META):
        if (stage / name).exists():
            _move(stage / name, slot_dir / name, step, f"{what}: {name} back in the slot")
    _remove_dir(stage)
    step(f"{what}: done")


def _remove_dir(path: Path) -> None:
    """Remove a staging directory (only files are ever put there) and fsync its parent."""
    if not path.is_dir():
        return
    for p in path.iterdir():
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    path.rmdir()
    fsync_dir(path.parent)


def displace(slot_dir: Path, step: Step) -> None:
    """Move the slot's complete model into ``displaced/``: ``meta.json`` first (the slot is
    incomplete from that instant, as before any write), then the sealed model, then the staging
    directory is renamed to ``displaced`` in one step, so ``displaced/`` only ever appears
    whole. The caller checked that the slot is complete and that nothing is displaced yet."""
    stage = slot_dir / _DISPLACING
    stage.mkdir(mode=0o700)
    fsync_dir(slot_dir)
    step("displace: staging made")
    _move(slot_dir / META, stage / META, step, "displace: meta.json staged")
    _move(slot_dir / SEALED, stage / SEALED, step, "displace: model.sealed staged")
    _move(stage, slot_dir / DISPLACED, step, "displace: done")


def restore(slot_dir: Path, step: Step) -> None:
    """Put the displaced version back: remove the slot's content (the abandoned candidate, its
    ``meta.json`` first), rename ``displaced`` to ``.restoring``, then move the files into the
    slot, ``meta.json`` last. The caller checked that the slot is not active."""
    remove_durably(slot_dir / META)
    step("restore: candidate marked incomplete")
    remove_durably(slot_dir / SEALED, slot_dir / PARTIAL)
    step("restore: candidate removed")
    _move(slot_dir / DISPLACED, slot_dir / _RESTORING, step, "restore: staged")
    _move_into_slot(slot_dir / _RESTORING, slot_dir, step, "restore")


def drop(slot_dir: Path, step: Step) -> None:
    """Delete the displaced version: ``meta.json`` first (so a cut leaves an incomplete
    ``displaced/`` that :func:`settle` recognises as a drop in progress), then the rest."""
    d = slot_dir / DISPLACED
    remove_durably(d / META)
    step("drop: marked incomplete")
    remove_durably(d / SEALED)
    step("drop: model removed")
    _remove_dir(d)
    step("drop: done")


def settle(slot_dir: Path, step: Step) -> None:
    """Finish or undo whatever a power cut interrupted under ``slot_dir`` (see the module doc).

    Afterwards ``displaced/`` either does not exist or is complete, and no staging directory is
    left. Idempotent; a cut during ``settle`` is settled by the next call.
    """
    if (slot_dir / _DISPLACING).is_dir():
        log.warning("slot %s: undoing an interrupted displacement of the previous version",
                    slot_dir.name)
        _move_into_slot(slot_dir / _DISPLACING, slot_dir, step, "settle displacing")
    if (slot_dir / _RESTORING).is_dir():
        log.warning("slot %s: finishing an interrupted restore of the previous version",
                    slot_dir.name)
        _move_into_slot(slot_dir / _RESTORING, slot_dir, step, "settle restoring")
    d = slot_dir / DISPLACED
    if d.is_dir() and not (d / META).is_file():
        log.warning("slot %s: finishing an interrupted removal of the displaced version",
                    slot_dir.name)
        remove_durably(d / SEALED)
        _remove_dir(d)
        step("settle drop: done")
