"""The quality gate's parts: holdout contract, metrics with CIs, the pure judge, the I/O
contract, memory budgets, and ``edge-updater validate`` (exit 0 / 1 / 2)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from device_updater.cli import main as updater_main
from device_updater.errors import HoldoutError, PolicyError
from device_updater.validation import (
    ValidationResult,
    evaluate_policy,
    load_holdout,
    make_holdout,
    metrics as mx,
    parse_device_policy,
    run_gate,
)
from device_updater.validation.contract import compare
from device_updater.validation.gate import latency_from_pairs, memory_budget
from device_updater.validation.judge import (
    NOISE_FLOOR_MS,
    Estimate,
    Evidence,
    Latency,
    Measured,
    judge,
)
from edgepkg.formats import build
from edgepkg.policy import parse_policy

ROOT = Path(__file__).resolve().parents[1]


# --- pure cores ----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["device_updater/validation/judge.py",
                                    "device_updater/validation/contract.py",
                                    "edgepkg/policy.py"])
def test_policy_judgement_modules_are_pure(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module if node.module.startswith("edgepkg") else
                      node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"edgepkg.policy", "edgepkg.errors"}
    assert names <= allowed, names - allowed


def _est(v: float, n: int = 100) -> Estimate:
    return Estimate(v, v - 0.05, v + 0.05, n)


def test_judge_lists_every_rule_with_values_ci_and_limit() -> None:
    p = parse_policy({"metric": "top1_accuracy", "min": 0.7, "max_regression": 0.02,
                      "max_latency_ms": 5.0})
    ev = Evidence(Measured("top1_accuracy", _est(0.80), _est(0.90)), candidate_p95_ms=1.0,
                  io_problems=[])
    v = judge(p, ev)
    assert not v.accepted
    by_rule = {c.rule: c for c in v.checks}
    assert by_rule["min"].status == "pass" and by_rule["min"].ci == pytest.approx([0.75, 0.85])
    reg = by_rule["max_regression"]
    assert reg.status == "fail" and reg.value == 0.8 and reg.running == 0.9 and reg.limit == 0.02
    assert v.reasons[0].startswith("FAIL max_regression")  # the deciding rule comes first
    assert by_rule["max_latency_ms"].status == "pass"


def test_significant_mode_forgives_a_drop_within_noise_but_not_a_real_one() -> None:
    base = {"metric": "top1_accuracy", "max_regression": 0.02,
            "statistics": {"mode": "significant", "alpha": 0.05}}
    p = parse_policy(base)
    noisy = Measured("top1_accuracy", _est(0.86), _est(0.90), p_within=0.30)
    real = Measured("top1_accuracy", _est(0.70), _est(0.90), p_within=0.0)
    assert judge(p, Evidence(noisy, 1.0)).accepted
    assert not judge(p, Evidence(real, 1.0)).accepted
    threshold = parse_policy({**base, "statistics": {"mode": "threshold"}})
    assert not judge(threshold, Evidence(noisy, 1.0)).accepted


def test_latency_ratio_of_tiny_models_under_the_noise_floor_passes() -> None:
    p = parse_policy({"max_latency_ratio": 1.5})
    tiny = Latency(2.0, 1.9, 2.1, 500, 0.02, 0.01)  # 2x, but 10 µs apart
    big = Latency(2.0, 1.9, 2.1, 500, 2.0, 1.0)
    assert (tiny.candidate_median_ms - tiny.running_median_ms) < NOISE_FLOOR_MS
    m = Measured("top1_accuracy", _est(0.9))
    assert judge(p, Evidence(m, 0.02, latency=tiny)).accepted
    assert not judge(p, Evidence(m, 2.0, latency=big)).accepted


def test_rules_without_evidence_are_skipped_out_loud_not_passed() -> None:
    p = parse_policy({"max_regression": 0.02, "max_memory_ratio": 2.0,
                      "max_latency_ratio": 1.5})
    v = judge(p, Evidence(Measured("top1_accuracy", _est(0.9)), 1.0))
    assert v.accepted
    assert {c.status for c in v.checks} == {"skipped"}


def test_missing_slice_in_holdout_is_a_rejection() -> None:
    p = parse_policy({"slices": [{"tag": "night", "min": 0.5}]})
    v = judge(p, Evidence(Measured("top1_accuracy", _est(0.9)), 1.0))
    assert not v.accepted and "no such mask" in v.reasons[0]


def test_paired_ratio_ci_brackets_one_for_identical_timings() -> None:
    rng = np.random.default_rng(0)
    a = rng.lognormal(0, 0.3, 2000)
    b = rng.lognormal(0, 0.3, 2000)
    lat = latency_from_pairs(a, b)
    assert lat.ratio_lo < 1.0 < lat.ratio_hi and 0.9 < lat.ratio < 1.1


def test_memory_budget_comes_from_the_policy() -> None:
    assert memory_budget(parse_policy({}), None) is None
    assert memory_budget(parse_policy({"max_memory_bytes": 1000}), None) == 1000


# --- contract and metrics ------------------------------------------------------------------------


def _sig(dtype: str = "float32", classes: int = 4, quant: list | None = None,
         name: str = "probabilities") -> dict:
    return {"inputs": [{"name": "input", "dtype": dtype, "shape": [-1, 8],
                        "quantization": quant}],
            "outputs": [{"name": name, "dtype": "float32", "shape": [-1, classes],
                         "quantization": None}]}


def test_io_contract_names_dtype_shape_and_class_count() -> None:
    assert compare(_sig(), _sig()) == []
    assert compare(_sig("int8", quant=[0.1, 3]), _sig()) == []  # int8 build of the same model
    assert "dtype changed" in compare(_sig("float64"), _sig())[0]
    assert "class count changed: 4 -> 5" in compare(_sig(classes=5), _sig(),
                                                    scored_outputs=["probabilities"])[0]
    assert "outputs differ" in compare(_sig(name="probs"), _sig())[0]


def test_class_ids_are_scored_as_ids_and_unscorable_outputs_are_refused() -> None:
    ids, c = mx.class_ids("y", np.array([2, 0, 1]), 3)
    assert list(ids) == [2, 0, 1] and c is None
    with pytest.raises(mx.ScoringError, match="one float32 per sample"):
        mx.class_ids("y", np.zeros((3, 1), np.float32), 3)
    with pytest.raises(mx.ScoringError, match="never flattens"):
        mx.class_ids("y", np.zeros((3, 2, 2), np.float32), 3)


def test_auroc_and_map50_on_known_cases() -> None:
    assert mx.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert mx.auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    gt = np.array([[0, 1, 0, 0, 10, 10], [1, 0, 5, 5, 15, 15]], np.float64)
    boxes = np.array([[[0, 0, 10, 10]], [[5, 5, 15, 15]]], np.float64)
    det = (boxes, np.ones((2, 1)), np.array([[1], [0]]))
    m = mx.match(det, gt, 2)
    assert mx.map50(m, np.arange(2)) == 1.0
    off = (boxes + 8, np.ones((2, 1)), np.array([[1], [0]]))
    assert mx.map50(mx.match(off, gt, 2), np.arange(2)) == 0.0


def test_wilson_interval_is_sane_at_the_edges() -> None:
    lo, hi = mx.wilson(0, 15)
    assert lo == 0.0 and 0.15 < hi < 0.25
    lo, hi = mx.wilson(15, 15)
    assert hi == 1.0 and lo > 0.75


# --- holdout format ------------------------------------------------------------------------------


def test_holdout_directory_with_named_inputs_slices_and_float_labels(tmp_path: Path) -> None:
    x = np.zeros((6, 3), np.float32)
    np.savez(tmp_path / "inputs.npz", input=x)
    np.save(tmp_path / "labels.npy", np.linspace(0, 1, 6).astype(np.float32))
    np.savez(tmp_path / "slices.npz", night=np.array([1, 0, 1, 0, 0, 0], bool))
    h = load_holdout(tmp_path, task="regression")
    assert set(h.named_inputs) == {"input"} and h.slices["night"].sum() == 2
    with pytest.raises(HoldoutError, match="integers"):
        load_holdout(tmp_path)  # classification needs class ids


def test_holdout_slice_masks_must_be_boolean_and_n_long() -> None:
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(HoldoutError, match="boolean mask"):
        make_holdout(x, np.zeros(4, np.int64), slices={"night": np.ones(4, np.int64)})
    with pytest.raises(HoldoutError, match="boolean mask"):
        make_holdout(x, np.zeros(4, np.int64), slices={"night": np.ones(3, bool)})


def test_detection_holdout_needs_boxes(tmp_path: Path) -> None:
    np.save(tmp_path / "inputs.npy", np.zeros((2, 4, 7), np.float32))
    with pytest.raises(HoldoutError, match="missing"):
        load_holdout(tmp_path, task="detection")
    np.save(tmp_path / "boxes.npy", np.array([[5, 0, 0, 0, 1, 1]], np.float32))
    with pytest.raises(HoldoutError, match="sample index"):
        load_holdout(tmp_path, task="detection")


# --- the old single-result path keeps working ----------------------------------------------------


def test_legacy_evaluate_policy_says_which_rules_it_cannot_check() -> None:
    r = ValidationResult("top1_accuracy", 0.9, 1.0, 2.0, 10, {"top1_accuracy": 0.9})
    d = evaluate_policy(r, None, {"min": 0.8, "per_class": {"min_recall": 0.3}})
    assert d.accepted and any("full gate" in x for x in d.reasons)
    with pytest.raises(PolicyError):
        parse_device_policy({"per_class": {"min_recal": 1}})


# --- end to end through real runtimes ------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gate")
    x, y = build.blobs_dataset(300, 8, 3, seed=5)
    w = build.train_mlp(x[:150], y[:150], hidden=16, epochs=200, seed=5)
    (wh, bh), (wo, bo) = w
    rot = [(wh, bh), (np.roll(wo, 1, axis=1), np.roll(bo, 1))]
    (d / "good.onnx").write_bytes(build.onnx_mlp(w))
    (d / "bad.onnx").write_bytes(build.onnx_mlp(rot))
    (d / "f16.onnx").write_bytes(build.onnx_mlp(w, input_dtype="float16"))
    hd = d / "holdout"
    hd.mkdir()
    np.save(hd / "inputs.npy", x[150:])
    np.save(hd / "labels.npy", y[150:])
    (d / "policy.toml").write_text('metric = "top1_accuracy"\nmin = 0.8\n'
                                   'max_regression = 0.02\nmax_latency_ratio = 1.5\n')
    return {"dir": d, "holdout": hd, "policy": d / "policy.toml"}


def _validate(models: dict, cand: str, running: str, *extra: str) -> int:
    d = models["dir"]
    return updater_main(["validate", "--candidate", str(d / cand), "--running",
                         str(d / running), "--holdout", str(models["holdout"]),
                         "--policy", str(models["policy"]), "--timeout", "60",
                         "--latency-budget", "0.5", *extra])


def test_validate_accepts_a_good_candidate_with_json_evidence(models, capsys) -> None:
    assert _validate(models, "good.onnx", "good.onnx", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["accepted"] is True
    rules = {c["rule"]: c for c in doc["checks"]}
    assert rules["min"]["ci"] and rules["max_latency_ratio"]["status"] == "pass"
    assert doc["candidate"]["signature"]["inputs"][0]["name"] == "input"


def test_validate_rejects_a_bad_candidate_with_reasons(models, capsys) -> None:
    assert _validate(models, "bad.onnx", "good.onnx") == 1
    out = capsys.readouterr().out
    assert out.startswith("REJECT") and "FAIL min" in out


def test_validate_rejects_an_input_dtype_change_instead_of_casting(models, capsys) -> None:
    assert _validate(models, "f16.onnx", "good.onnx") == 1
    assert "never casts" in capsys.readouterr().out


def test_validate_usage_and_setup_errors_exit_2(models, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        updater_main(["validate", "--candidate", "x"])
    assert exc.value.code == 2
    assert _validate(models, "good.onnx", "good.onnx", "--holdout", str(tmp_path)) == 2
    assert "inputs.npy" in capsys.readouterr().err
    bad_policy = tmp_path / "p.toml"
    bad_policy.write_text("metric = 'f1'\n")
    assert _validate(models, "good.onnx", "good.onnx", "--policy", str(bad_policy)) == 2


def test_gate_first_install_checks_absolute_rules_only(models) -> None:
    h = load_holdout(models["holdout"])
    policy = parse_device_policy({"min": 0.8, "max_regression": 0.02})
    r = run_gate(models["dir"] / "good.onnx", "onnx", None, None, h, policy, timeout=60)
    assert r.accepted
    assert {c.rule: c.status for c in r.verdict.checks}["max_regression"] == "skipped"


# --- the daemon's entry point: both slots exported, the gate run, evidence sized for an event ---


def test_validate_slots_judges_the_candidate_slot_against_the_active_one(models,
                                                                         tmp_path) -> None:
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ec

    from device_updater.slots import BundleSealer, ModelSummary, SlotStore
    from device_updater.validation.device import MAX_DETAIL_BYTES, validate_slots
    from edgepkg.keys._software import FileRecipientKey

    key = FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "test device key")
    store = SlotStore(tmp_path / "slots", sealer=BundleSealer(key, chunk_size=4096))
    policy = {"metric": "top1_accuracy", "min": 0.8, "max_regression": 0.02,
              "max_latency_ratio": 1.5, "max_memory_ratio": 2.0}

    def install(version: str, fname: str) -> tuple[ModelSummary, str]:
        data = (models["dir"] / fname).read_bytes()
        s = ModelSummary(name="m", version=version, sha256=hashlib.sha256(data).hexdigest(),
                         length=len(data), format="onnx", policy=policy)
        slot = store.write(s, [data]).name
        return s, slot

    _, first = install("1.0.0", "good.onnx")
    store.switch_to(first)
    bad, bad_slot = install("2.0.0", "bad.onnx")
    accepted, reasons, details = validate_slots(
        store, bad_slot, bad, store.active(), holdout_path=models["holdout"],
        runtime_dir=tmp_path / "run", timeout=60, latency_budget_s=0.5)
    assert not accepted and reasons[0].startswith("min:")
    assert details["checks"][0]["status"] == "fail" and details["passed"] is False
    assert len(json.dumps(details)) <= MAX_DETAIL_BYTES
    assert not list((tmp_path / "run").glob(".export-*"))  # plaintext exports removed
