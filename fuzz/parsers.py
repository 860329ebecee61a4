"""Mutation fuzzer over every edgepkg parser that reads untrusted bytes (issue 13 items 6 and 8).

Targets: the bundle header and manifest (what ``edgepkg inspect``/``unpack`` read before any
signature check), the three delta decoders (bsdiff, zstd-window, tensor) through
``apply_delta``, and model detection for each format (TFLite, TFLM flatbuffer and C arrays,
ONNX, TensorRT, Edge TPU). Seeds are small valid files built by edgepkg itself (``_seeds``).

A case passes when the parser returns or raises an ``edgepkg.errors.Error`` subclass within the
per-case time bound. Anything else is an *untyped* exception; a case over the bound is a *hang*
(SIGALRM interrupts it where Python code runs). Fixed seed: the same ``--seed`` and ``--cases``
replay the same inputs.

    python -m fuzz.parsers --cases 50000 [--seed 13] [--case-seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepkg.bundle import read_bundle_info
from edgepkg.bundle._manifest import Manifest
from edgepkg.delta import apply_delta, make_delta
from edgepkg.errors import Error
from edgepkg.formats import detect
from fuzz import _seeds

_INTERESTING_INTS = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
_HOSTILE_JSON = (
    "[" * 5000, "1" * 5000, "NaN", "-Infinity", "1e999", '"\\ud800"', '"\\u0000"', "{}",
    '{"a":' * 100, "null", "true", "-0", "18446744073709551616", '"' + "x" * 70000 + '"',
)


class _Hang(BaseException):
    """Raised by SIGALRM inside a case that ran past the bound (BaseException: not caught by
    a parser's ``except Exception``)."""


@dataclass
class Result:
    cases: int = 0
    untyped: list[dict[str, Any]] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    slowest: float = 0.0
    seconds: float = 0.0
    per_target: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"cases": self.cases, "untyped_exceptions": len(self.untyped),
                "hangs": len(self.hangs), "slowest_case_s": round(self.slowest, 3),
                "seconds": round(self.seconds, 1), "per_target": self.per_target,
                "untyped": self.untyped[:20], "hang_cases": self.hangs[:20]}


# --- mutation --------------------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """One to four stacked byte-level mutations (flips, interesting ints, cut, splice, repeat)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(buf)
        op = rng.randrange(9)
        pos = rng.randrange(n) if n else 0
        if op == 0 and n:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2 and n >= 4:
            v = rng.choice(_INTERESTING_INTS)
            pos = min(pos, n - 4)
            buf[pos : pos + 4] = (v & 0xFFFFFFFF).to_bytes(4, rng.choice(("little", "big")))
        elif op == 3:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 4:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == 5 and n:
            piece = bytes(buf[pos : pos + rng.randint(1, 64)])
            buf[pos:pos] = piece * rng.randint(1, 200)
        elif op == 6:
            del buf[rng.randint(0, n) :]
        elif op == 7 and others:
            other = rng.choice(others)
            if other:
                at = rng.randrange(len(other))
                buf[pos:] = other[at : at + rng.randint(1, 512)] + buf[pos:]
        elif op == 8 and n >= 8:
            pos = min(pos, n - 8)
            buf[pos : pos + 8] = rng.getrandbits(64).to_bytes(8, "little")
    return bytes(buf)


def mutate_json(rng: random.Random, raw: bytes) -> bytes:
    """Replace a value-ish span of the JSON text by a hostile token (deep nesting, huge ints...)."""
    text = raw.decode()
    starts = [i for i, c in enumerate(text) if c in ':[,']
    i = rng.choice(starts) + 1
    j = i
    while j < len(text) and text[j] not in ",}]":
        j += 1
    return (text[:i] + rng.choice(_HOSTILE_JSON) + text[j:]).encode("utf-8", "surrogatepass")


# --- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    run: Callable[[bytes], object]
    json_seed: bool = False


def _targets(work: Path) -> list[Target]:
    targets: list[Target] = []
    case_file = work / "case"

    def on_file(fn: Callable[[Path], object]) -> Callable[[bytes], object]:
        def run(data: bytes) -> object:
            case_file.write_bytes(data)
            return fn(case_file)
        return run

    targets.append(Target("manifest", [_seeds.manifest_bytes()], Manifest.from_json, True))
    targets.append(Target("bundle-header", [_seeds.bundle_header()], on_file(read_bundle_info)))

    def detector(fmt: str, extra: dict[str, str | int] | None) -> Callable[[Path], object]:
        return lambda p: detect(p, format=fmt, extra_requirements=extra)

    for name, (fmt, data) in _seeds.model_files().items():
        extra: dict[str, str | int] | None = {"gpu_sm": 87} if name == "tensorrt" else None
        targets.append(Target(f"model:{name}", [data], on_file(detector(fmt, extra))))

    # deltas: a small base and a target that differs by edits and a move
    rng = random.Random(7)
    old = bytes(rng.randrange(256) for _ in range(6000))
    new = bytearray(old[1000:] + old[:1000])
    for k in range(0, len(new), 97):
        new[k] ^= 0x5A
    old_path, new_path = work / "old", work / "new"
    old_path.write_bytes(old)
    new_path.write_bytes(bytes(new))
    import hashlib

    sha = hashlib.sha256(bytes(new)).hexdigest()
    out = work / "rebuilt"
    for method in ("bsdiff", "zstd-window", "tensor"):
        d = work / f"delta-{method}"
        make_delta(old_path, new_path, d, methods=[method], verify=False, workdir=work)

        def run_delta(data: bytes) -> object:
            apply_delta(old_path, io.BytesIO(data), out, expected_sha256=sha,
                        expected_length=len(new))
            return None
        targets.append(Target(f"delta:{method}", [d.read_bytes()], run_delta))
    return targets


# --- driver ----------------------------------------------------------------------------------


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise _Hang()
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run(cases: int, *, seed: int = 13, case_seconds: float = 2.0,
        progress: Callable[[int], None] | None = None) -> Result:
    """Run ``cases`` mutated inputs round-robin over the targets; never raises for a finding."""
    res = Result()
    rng = random.Random(seed)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgepkg-fuzz-") as tmp:
        targets = _targets(Path(tmp))
        corpus = [s for t in targets for s in t.seeds]
        for i in range(cases):
            target = targets[i % len(targets)]
            base = rng.choice(target.seeds)
            data = (mutate_json(rng, base) if target.json_seed and rng.random() < 0.5
                    else mutate(rng, base, corpus))
            res.per_target[target.name] = res.per_target.get(target.name, 0) + 1
            start = time.monotonic()
            try:
                with _alarm(case_seconds):
                    target.run(data)
            except Error:
                pass
            except _Hang:
                res.hangs.append({"target": target.name, "case": i, "bytes": len(data)})
            except Exception as exc:  # the finding this fuzzer exists for
                res.untyped.append({
                    "target": target.name, "case": i, "error": f"{type(exc).__name__}: {exc}"[:300],
                    "where": traceback.format_exc(limit=-3).splitlines()[-3:],
                })
            took = time.monotonic() - start
            res.slowest = max(res.slowest, took)
            if took > case_seconds and not (res.hangs and res.hangs[-1]["case"] == i):
                res.hangs.append({"target": target.name, "case": i, "seconds": round(took, 2)})
            res.cases += 1
            if progress is not None and (i + 1) % 1000 == 0:
                progress(i + 1)
    res.seconds = time.monotonic() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.parsers", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--case-seconds", type=float, default=2.0, help="per-case time bound")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)

    def show(n: int) -> None:
        print(f"  {n}/{args.cases} cases", file=sys.stderr, flush=True)

    res = run(args.cases, seed=args.seed, case_seconds=args.case_seconds, progress=show)
    summary = res.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{res.cases} cases in {res.seconds:.1f} s: {len(res.untyped)} untyped exceptions, "
              f"{len(res.hangs)} hangs, slowest case {res.slowest:.3f} s")
        for u in res.untyped[:20]:
            print(f"  untyped {u['target']} case {u['case']}: {u['error']}")
        for h in res.hangs[:20]:
            print(f"  hang {h}")
    return 1 if res.untyped or res.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
