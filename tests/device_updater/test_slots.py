"""A/B slots: encrypted at rest, verified against the signed SHA-256, atomic pointer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from device_updater.errors import (
    IncompleteSlotError,
    NoActiveSlotError,
    SlotError,
    SlotIntegrityError,
    UntrustedDeviceInputError,
)
from device_updater.recovery import run_recovery
from device_updater.slots import BundleSealer, ModelSummary, SlotStore
from device_updater.state import (
    Committed,
    Downloaded,
    Installed,
    Reject,
    Start,
    Switched,
    UpdateState,
    Validated,
    Verified,
    transition,
)
from device_updater.state_store import StateStore
from edgepkg.keys._software import FileRecipientKey


def device_key() -> FileRecipientKey:
    """A throwaway P-256 device key (test only)."""
    return FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "test device key")


def model(version: str, size: int = 50_000) -> tuple[ModelSummary, bytes]:
    data = hashlib.shake_256(version.encode()).digest(size)
    return ModelSummary(name="cam", version=version, sha256=hashlib.sha256(data).hexdigest(),
                        length=len(data), format="onnx"), data


def chunks(data: bytes, n: int = 7000) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


@pytest.fixture
def store(tmp_path: Path) -> SlotStore:
    return SlotStore(tmp_path / "slots", sealer=BundleSealer(device_key(), chunk_size=4096))


def test_install_switch_and_rollback_keep_two_versions(store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    s2, d2 = model("2.0.0")
    assert store.active() is None and store.inactive_name() == "a"
    store.switch_to(store.write(s1, chunks(d1)).name)
    info2 = store.write(s2, chunks(d2))
    assert info2.name == "b" and store.active().version == "1.0.0"  # type: ignore[union-attr]
    store.switch_to("b")
    assert b"".join(store.open_plaintext()) == d2
    assert store.checkin_view() == {
        "active_slot": "b",
        "slots": {"a": {"version": "1.0.0", "sha256": s1.sha256},
                  "b": {"version": "2.0.0", "sha256": s2.sha256}},
    }
    assert store.rollback().version == "1.0.0"
    assert b"".join(store.open_plaintext()) == d1


def test_model_is_encrypted_at_rest(store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    store.write(s1, [d1])
    sealed = (store.root / "a" / "model.sealed").read_bytes()
    assert d1[:64] not in sealed and d1[1000:1064] not in sealed
    assert len(sealed) > len(d1)


def test_model_not_matching_signed_sha256_is_refused_and_slot_stays_incomplete(
        store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    bad = bytearray(d1)
    bad[100] ^= 1
    with pytest.raises(SlotIntegrityError, match="does not match its signed"):
        store.write(s1, [bytes(bad)])
    assert store.info("a") is None
    assert not (store.root / "a" / "model.partial").exists()
    with pytest.raises(IncompleteSlotError):
        store.switch_to("a")


def test_model_longer_than_signed_length_is_refused_early(store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    with pytest.raises(SlotIntegrityError, match="longer than its signed length"):
        store.write(s1, [d1, b"extra"])


def test_uncommitted_write_is_never_activated(store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    with store.begin_write(s1) as w:
        w.write(d1[:1000])
    assert store.info("a") is None
    with pytest.raises(IncompleteSlotError):
        store.switch_to("a")


def test_install_never_writes_the_active_slot(store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    store.switch_to(store.write(s1, [d1]).name)
    with pytest.raises(SlotError, match="is active"):
        store.begin_write(model("2.0.0")[0], slot="a")
    with pytest.raises(SlotError, match="active"):
        store.discard("a")


def test_begin_write_marks_the_old_content_incomplete_first(store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    s2, _ = model("2.0.0")
    store.write(s1, [d1], slot="b")
    w = store.begin_write(s2, slot="b")
    assert store.info("b") is None  # the old model in b is no longer usable mid-write
    w.abort()


def test_flipped_byte_in_sealed_slot_is_detected(store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    store.write(s1, [d1])
    path = store.root / "a" / "model.sealed"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(SlotIntegrityError):
        store.verify("a")
    with pytest.raises(SlotIntegrityError):
        store.switch_to("a")
    assert store.active_name() is None


def test_edited_metadata_cannot_relabel_a_model(store: SlotStore) -> None:
    """meta.json is not signed, but the sealed stream is bound to the summary it claims."""
    s1, d1 = model("1.0.0")
    store.write(s1, [d1])
    meta_path = store.root / "a" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["summary"]["version"] = "9.9.9"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SlotIntegrityError):
        store.verify("a")


def test_another_devices_key_cannot_open_the_slot(tmp_path: Path) -> None:
    s1, d1 = model("1.0.0")
    SlotStore(tmp_path / "s", sealer=BundleSealer(device_key())).write(s1, [d1])
    thief = SlotStore(tmp_path / "s", sealer=BundleSealer(device_key()))
    with pytest.raises(SlotIntegrityError, match="does not open"):
        thief.verify("a")


def test_damaged_pointer_reads_as_no_active_slot(store: SlotStore) -> None:
    (store.root / "active").write_text("../../etc/passwd\n")
    assert store.active_name() is None
    with pytest.raises(NoActiveSlotError):
        store.export_plaintext(None, store.root / "run")


def test_export_writes_plaintext_0600_atomically(store: SlotStore, tmp_path: Path) -> None:
    s1, d1 = model("1.0.0")
    store.switch_to(store.write(s1, chunks(d1)).name)
    out = store.export_plaintext(None, tmp_path / "run")
    assert out.read_bytes() == d1 and out.name == "cam.onnx"
    assert (out.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["cam.onnx"]


def test_exported_context_removes_plaintext_afterwards(store: SlotStore, tmp_path: Path) -> None:
    s1, d1 = model("1.0.0")
    store.write(s1, [d1])
    with store.exported("a", tmp_path / "run") as p:
        assert p.read_bytes() == d1
    assert not p.exists()


def test_rollback_needs_a_complete_other_slot(store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    store.switch_to(store.write(s1, [d1]).name)
    with pytest.raises(SlotError, match="cannot roll back"):
        store.rollback()


def test_empty_model_round_trips(store: SlotStore) -> None:
    s0 = ModelSummary(name="e", version="0.0.1", sha256=hashlib.sha256(b"").hexdigest(),
                      length=0, format="raw")
    store.switch_to(store.write(s0, []).name)
    assert b"".join(store.open_plaintext()) == b""


@pytest.mark.parametrize("bad", [
    {"name": "../x", "version": "1.0.0", "sha256": "0" * 64, "length": 1, "format": "onnx"},
    {"name": "x", "version": "1.0.0", "sha256": "0" * 63, "length": 1, "format": "onnx"},
    {"name": "x", "version": "1.0.0", "sha256": "0" * 64, "length": -1, "format": "onnx"},
    {"name": "x", "version": "1.0.0", "sha256": "0" * 64, "length": True, "format": "onnx"},
    {"name": "x", "version": "1.0.0", "sha256": "0" * 64, "length": 1, "format": "exe"},
    {"name": "x", "version": "a/b", "sha256": "0" * 64, "length": 1, "format": "onnx"},
    [],
])
def test_malformed_summary_is_refused(bad: object) -> None:
    with pytest.raises(UntrustedDeviceInputError):
        ModelSummary.from_mapping(bad)  # type: ignore[arg-type]


def test_summary_accepts_manifest_summary_shape() -> None:
    s = ModelSummary.from_mapping({"kind": "full", "name": "cam", "version": "2.0.0",
                                   "format": "tflite", "sha256": "a" * 64, "length": 5,
                                   "policy": {"min": 0.9}, "requirements": {}, "delta": None})
    assert s.policy == {"min": 0.9} and s.format == "tflite"


def test_view_reports_partial_and_deep_damage(store: SlotStore) -> None:
    s1, d1 = model("1.0.0")
    s2, _ = model("2.0.0")
    store.switch_to(store.write(s1, [d1]).name)
    w = store.begin_write(s2)
    w.write(b"x" * 10)  # left behind, as after a power cut
    v = store.view(deep=True)
    assert v.active == "a" and v.slots["a"].intact and v.slots["b"].partial
    assert not v.slots["b"].complete
    os.truncate(store.root / "a" / "model.sealed", 100)
    assert not store.view(deep=False).slots["a"].complete  # size no longer matches


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 8192, 3 * 4096 + 5])
@pytest.mark.parametrize("split", [1, 1000, 4096, 10_000])
def test_sealed_stream_round_trips_any_length_and_write_pattern(tmp_path: Path, size: int,
                                                                split: int) -> None:
    if split == 1 and size > 4097:
        pytest.skip("byte-at-a-time only for small models")
    data = os.urandom(size)
    s = ModelSummary(name="m", version="1.0.0", sha256=hashlib.sha256(data).hexdigest(),
                     length=size, format="raw")
    store = SlotStore(tmp_path / "s", sealer=BundleSealer(device_key(), chunk_size=4096))
    store.write(s, [data[i:i + split] for i in range(0, size, split)])
    assert b"".join(store.open_plaintext("a")) == data


def test_truncated_sealed_slot_at_a_chunk_boundary_is_detected(store: SlotStore) -> None:
    s1, d1 = model("1.0.0", size=3 * 4096)
    store.write(s1, [d1])
    path = store.root / "a" / "model.sealed"
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - (4096 + 16)])  # drop the whole last chunk
    meta_path = store.root / "a" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sealed_length"] = path.stat().st_size  # an attacker fixes up the size too
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SlotIntegrityError):
        store.verify("a")


def test_plaintext_left_by_a_dead_process_is_removed(store: SlotStore, tmp_path: Path) -> None:
    s1, d1 = model("1.0.0")
    store.write(s1, [d1])
    stale = tmp_path / "run" / ".export-999999999-a"
    stale.mkdir(parents=True)
    (stale / "cam.onnx").write_bytes(d1)
    with store.exported("a", tmp_path / "run"):
        pass
    assert not stale.exists()


def test_one_huge_write_is_sealed_in_linear_time(tmp_path: Path) -> None:
    data = os.urandom(16 << 20)
    s = ModelSummary(name="m", version="1.0.0", sha256=hashlib.sha256(data).hexdigest(),
                     length=len(data), format="raw")
    store = SlotStore(tmp_path / "s", sealer=BundleSealer(device_key(), chunk_size=4096))
    store.write(s, [data])  # 4096 chunks from one buffer: quadratic copying would take minutes
    store.verify("a")


# --- the previous version set aside while a candidate is written over it ----------------------


class _Recording(SlotStore):
    """A slot store that records each durable step of a displace/restore/drop and can SIGKILL
    its own process at step ``kill_at`` (power-cut style: the step is on disk, nothing after)."""

    def __init__(self, root: Path, sealer: BundleSealer, kill_at: int = 0) -> None:
        super().__init__(root, sealer=sealer)
        self.steps: list[str] = []
        self.kill_at = kill_at

    def _persisted(self, what: str) -> None:
        self.steps.append(what)
        if len(self.steps) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def _device(tmp_path: Path) -> tuple[Path, BundleSealer]:
    """v1 active in slot a, v0 (the version before it) kept in slot b."""
    sealer = BundleSealer(device_key(), chunk_size=4096)
    store = SlotStore(tmp_path / "slots", sealer=sealer)
    store.write(*_release("0.9.0"), slot="b")
    store.switch_to(store.write(*_release("1.0.0"), slot="a").name)
    return tmp_path / "slots", sealer


def _release(version: str) -> tuple[ModelSummary, list[bytes]]:
    s, d = model(version)
    return s, chunks(d)


def _kept(store: SlotStore) -> tuple[str, str | None]:
    """(active version, other slot's version), both decrypted and checked against their
    signed SHA-256; and nothing left set aside or half-moved."""
    active = store.active_name()
    assert active is not None
    other = "b" if active == "a" else "a"
    for n in ("a", "b"):
        assert not store.has_displaced(n)
        assert not [p.name for p in (store.root / n).iterdir() if p.is_dir()]
    return (store.verify(active).version,
            store.verify(other).version if store.info(other) is not None else None)


def test_candidate_write_sets_the_previous_version_aside_and_restore_puts_it_back(
        tmp_path: Path) -> None:
    root, sealer = _device(tmp_path)
    store = _Recording(root, sealer)
    store.write(*_release("2.0.0"))
    assert store.info("b").version == "2.0.0" and store.has_displaced("b")  # type: ignore[union-attr]
    assert store.steps == ["displace: staging made", "displace: meta.json staged",
                           "displace: model.sealed staged", "displace: done"]
    # A displaced/ directory only ever appears whole: meta.json and the sealed model together.
    assert sorted(p.name for p in (root / "b" / "displaced").iterdir()) == [
        "meta.json", "model.sealed"]
    store.steps.clear()
    assert store.restore_displaced("b")
    assert store.steps == [
        "restore: candidate marked incomplete", "restore: candidate removed", "restore: staged",
        "restore: model.sealed back in the slot", "restore: meta.json back in the slot",
        "restore: done"]
    assert _kept(store) == ("1.0.0", "0.9.0")
    assert not store.restore_displaced("b")  # nothing left to put back


def test_commit_drops_the_set_aside_version_and_the_active_slot_is_never_restored_over(
        tmp_path: Path) -> None:
    root, sealer = _device(tmp_path)
    store = _Recording(root, sealer)
    store.switch_to(store.write(*_release("2.0.0")).name)
    with pytest.raises(SlotError, match="active"):
        store.restore_displaced("b")
    store.steps.clear()
    assert store.drop_displaced("b")
    assert store.steps == ["drop: marked incomplete", "drop: model removed", "drop: done"]
    assert _kept(store) == ("2.0.0", "1.0.0")


def test_rewrite_after_an_interrupted_write_keeps_the_set_aside_version(tmp_path: Path) -> None:
    root, sealer = _device(tmp_path)
    store = SlotStore(root, sealer=sealer)
    s2, c2 = _release("2.0.0")
    with store.begin_write(s2) as w:
        w.write(c2[0])  # cut short
    store.write(s2, c2)  # the install again: v0 stays aside, not replaced by the leftovers
    store.write(s2, c2)  # and again over a complete copy of the same candidate
    assert store.restore_displaced("b")
    assert _kept(store) == ("1.0.0", "0.9.0")


def test_tampered_set_aside_version_is_never_activated(tmp_path: Path) -> None:
    root, sealer = _device(tmp_path)
    store = SlotStore(root, sealer=sealer)
    store.write(*_release("2.0.0"))
    sealed = root / "b" / "displaced" / "model.sealed"
    raw = bytearray(sealed.read_bytes())
    raw[len(raw) // 2] ^= 1
    sealed.write_bytes(bytes(raw))
    assert store.restore_displaced("b")
    with pytest.raises(SlotIntegrityError):
        store.switch_to("b")
    assert store.active_name() == "a"


def _states(target: str, slot: str) -> dict[str, UpdateState]:
    s, _ = model(target)
    st = UpdateState()
    for ev in (Start("cam", target, f"models/cam/{target}"), Downloaded(s), Verified(s, slot)):
        st = transition(st, ev, 1.0)
    installing = st
    validating = transition(installing, Installed(), 2.0)
    committed = validating
    for ev2 in (Validated(), Switched(), Committed("healthy")):
        committed = transition(committed, ev2, 3.0)
    return {"installing": installing, "committed": committed,
            "rejected": transition(validating, Reject("holdout failed", active="a"), 4.0)}


def _killed(root: Path, sealer: BundleSealer, k: int, op: str) -> bool:
    """Run ``op`` in a forked child that SIGKILLs itself at durable step ``k``; True if killed."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        store = _Recording(root, sealer, kill_at=k)
        try:
            if op == "displace":
                store.write(*_release("2.0.0"))
            elif op == "restore":
                store.restore_displaced("b")
            else:
                store.drop_displaced("b")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


@pytest.mark.parametrize("op", ["displace", "restore", "drop"])
def test_power_cut_at_every_step_converges_to_active_plus_previous_good(
        tmp_path: Path, op: str) -> None:
    """A kill between every rename; start-up recovery then always leaves the active good model
    plus the previous good version, both verifiable, and nothing half-moved."""
    base, sealer = _device(tmp_path / "base")
    prep = SlotStore(base, sealer=sealer)
    if op in ("restore", "drop"):
        prep.write(*_release("2.0.0"))  # v0 set aside in b, v2 written there
    if op == "drop":
        prep.switch_to("b")
    states = _states("2.0.0", "b")
    k = 1
    while True:
        root = tmp_path / f"{op}-{k}" / "slots"
        shutil.copytree(base, root)
        killed = _killed(root, sealer, k, op)
        store = SlotStore(root, sealer=sealer)
        state = StateStore(root.parent / "state.json")
        if op == "displace":  # cut during the install: recover, install again, then reject
            state.save(states["installing"])
            run_recovery(state, store, 10.0)
            store.write(*_release("2.0.0"))
            state.save(states["rejected"])
            run_recovery(state, store, 11.0, crashed=False)
            assert _kept(store) == ("1.0.0", "0.9.0"), k
        elif op == "restore":  # cut while a reject put v0 back
            state.save(states["rejected"])
            run_recovery(state, store, 10.0)
            assert _kept(store) == ("1.0.0", "0.9.0"), k
        else:  # cut while the commit deleted the set-aside v0
            state.save(states["committed"])
            run_recovery(state, store, 10.0)
            assert _kept(store) == ("2.0.0", "1.0.0"), k
        if not killed:
            break
        k += 1
    assert k > {"displace": 4, "restore": 6, "drop": 3}[op]  # every step was cut once


def test_stale_export_with_a_nested_scratch_dir_is_removed(tmp_path: Path) -> None:
    """A run killed inside ``exported()`` while ``export_plaintext`` was writing leaves
    ``.export-<pid>-b/.export-<pid>-xxxx/``; the next run's clean-up removes both levels."""
    from device_updater.slots import remove_stale_exports

    dead = 2**22 + 12345  # above pid_max's default: no such process
    nested = tmp_path / f".export-{dead}-b" / f".export-{dead}-abc123"
    nested.mkdir(parents=True)
    (nested / "clf.onnx").write_bytes(b"plaintext")
    remove_stale_exports(tmp_path)
    assert list(tmp_path.iterdir()) == []
