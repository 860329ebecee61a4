"""Benchmark the validation gate: A/A latency pass rate and the corpus verdicts.

A/A: a ~10 µs ONNX classifier judged against a byte-identical copy of itself, each run a fresh
interleaved (ABAB) worker exactly as the gate runs it, under ``max_latency_ratio = 1.5``. The
issue's target is >= 199/200 passes on a loaded 2-core machine (``--load N`` adds N busy-loop
processes for the duration, on top of whatever else runs).

Corpus: the pairs of tests/_gate_corpus.py (ONNX, TFLite, TFLM; every failure class of issue 10
and the good updates), each judged ``--corpus-runs`` times; reports bad caught and good
accepted per run.

    .venv/bin/python bench/validation_gate.py --aa 200 --corpus-runs 3      # the full report
    .venv/bin/python bench/validation_gate.py --aa 40 --corpus-runs 1       # a quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device_updater.validation import load_holdout, make_holdout, parse_device_policy, run_gate
from device_updater.validation.gate import ModelRun, run_abab, run_model
from device_updater.validation.judge import Estimate, Evidence, Measured, judge
from edgepkg.formats import build


def _spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def aa(runs: int, budget_s: float, work: Path) -> dict[str, object]:
    x, y = build.blobs_dataset(256, 8, 3, seed=3)
    w = build.train_mlp(x, y, hidden=16, epochs=50, seed=3)
    model = build.onnx_mlp(w)
    (work / "a.onnx").write_bytes(model)
    (work / "b.onnx").write_bytes(model)
    holdout = make_holdout(x, y)
    policy = parse_device_policy({"max_latency_ratio": 1.5})
    m = Measured("top1_accuracy", Estimate(1.0, 1.0, 1.0, 1))  # only latency is judged here
    passes, ratios, t0 = 0, [], time.time()
    for _ in range(runs):
        lat = run_abab(work / "a.onnx", "onnx", work / "b.onnx", "onnx", holdout,
                       budget_s=budget_s, timeout=60)
        v = judge(policy, Evidence(m, 0.0, latency=lat))
        passes += v.accepted
        ratios.append(lat.ratio)
    r = np.asarray(ratios)
    return {"runs": runs, "passes": passes, "seconds": round(time.time() - t0, 1),
            "ratio_median": float(np.median(r)), "ratio_min": float(r.min()),
            "ratio_max": float(r.max())}


def corpus(runs: int, work: Path) -> list[dict[str, object]]:
    from tests._gate_corpus import build_corpus

    pairs = build_corpus(work)
    out = []
    for run in range(runs):
        cache: dict[tuple[str, str, str], ModelRun] = {}
        caught = accepted = 0
        wrong = []
        t0 = time.time()
        for p in pairs:
            policy = parse_device_policy(p.policy)
            h = load_holdout(work / p.holdout, task=policy.task)
            key = (p.running, p.running_fmt, p.holdout)
            if key not in cache:
                cache[key] = run_model(work / p.running, p.running_fmt, h, timeout=60)
            r = run_gate(work / p.candidate, p.cand_fmt, work / p.running, p.running_fmt, h,
                         policy, timeout=60, latency_budget_s=1.0, running_result=cache[key])
            if p.good and r.accepted:
                accepted += 1
            elif not p.good and not r.accepted:
                caught += 1
            else:
                wrong.append(p.name)
        out.append({"run": run + 1, "bad_caught": f"{caught}/{sum(not p.good for p in pairs)}",
                    "good_accepted": f"{accepted}/{sum(p.good for p in pairs)}",
                    "wrong": wrong, "seconds": round(time.time() - t0, 1)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aa", type=int, default=200, help="A/A runs (0 to skip)")
    ap.add_argument("--budget", type=float, default=1.0, help="ABAB time budget per run (s)")
    ap.add_argument("--corpus-runs", type=int, default=3)
    ap.add_argument("--load", type=int, default=0, help="busy-loop processes during A/A")
    args = ap.parse_args()
    report: dict[str, object] = {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.aa:
            spinners = [multiprocessing.Process(target=_spin, args=(time.time() + 3600,))
                        for _ in range(args.load)]
            for s in spinners:
                s.start()
            try:
                report["aa"] = aa(args.aa, args.budget, work)
            finally:
                for s in spinners:
                    s.terminate()
                    s.join()
        if args.corpus_runs:
            (work / "corpus").mkdir()
            report["corpus"] = corpus(args.corpus_runs, work / "corpus")
    report["loadavg_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
