"""A/B slots: encrypted at rest, verified against the signed SHA-256, atomic pointer."""

from __future__ import annotations

import hashlib
import json
import os
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
from device_updater.slots import BundleSealer, ModelSummary, SlotStore
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
