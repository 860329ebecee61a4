#!/usr/bin/env python3
"""Benchmark: `edgepkg package` / `edgepkg unpack` vs plain zstd on the same file, same run.

Two engine-like files at each size: "float32" (TensorRT header + normally distributed weights,
fixed seed; zstd saves ~7 %) and "random" (TensorRT header + random bytes: engines compress
poorly). For each step: wall time and the peak RSS of that process alone (os.wait4); medians of
interleaved runs, with the spread (min-max) of the ratios. Targets (issue 15), fsync counted on
both sides: package <= 1.2x `zstd -3 -T2`, unpack <= 1.3x `zstd -d` + `sha256sum`, peak RSS
<= 128 MB at every size (flat memory).

    python bench/package.py [--sizes 64,512] [--kinds float32,random] [--workdir DIR]
                            [--markdown docs/bench/package.md]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EDGEPKG = [sys.executable, "-m", "edgepkg.cli"]


def make_engine(path: Path, size_mb: int, kind: str = "float32", seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    header = bytearray(64)
    header[0:4] = b"ftrt"
    header[24:27] = bytes([10, 3, 0])
    with open(path, "wb") as fh:
        fh.write(header)
        remaining = size_mb * (1 << 20) - len(header)
        while remaining > 0:
            n = min(remaining, 16 << 20) // 4 * 4 or remaining
            if kind == "random":
                fh.write(rng.bytes(n))
            else:
                fh.write(rng.normal(0, 0.05, n // 4).astype(np.float32).tobytes()[:n])
            remaining -= n


def run(cmd: list[str], **kw) -> tuple[float, int]:
    """Run a command; return (seconds, peak RSS in MB of that process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed ({status}): {' '.join(cmd)}")
    return elapsed, usage.ru_maxrss // 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def _timed(cmd: list[str], out: Path | None = None, durable: bool = False) -> tuple[float, int]:
    """Flush earlier writes first (so no step pays for another's writeback), then run ``cmd``;
    with ``durable`` the time includes fsync of ``out`` (what edgepkg's atomic output does)."""
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    _, rss = run(cmd, stdout=subprocess.DEVNULL)
    if durable and out is not None:
        subprocess.run(["sync", str(out)], check=True)
    return time.perf_counter() - start, rss


def bench_size(
    work: Path, size_mb: int, kind: str, keys: dict[str, Path], repeat: int
) -> dict[str, float | str]:
    model = work / f"engine-{size_mb}.plan"
    make_engine(model, size_mb, kind)
    bundle = work / f"engine-{size_mb}.edgepkg"
    out = work / f"engine-{size_mb}.out"
    zst = work / f"engine-{size_mb}.zst"
    zout = work / f"engine-{size_mb}.zout"
    sha256_file(model)  # warm the page cache for both contenders alike
    package = [*EDGEPKG, "package", str(model), "--name", "engine", "--version", "1.0.0",
               "--require", "gpu_sm=87", "--sign-key", str(keys["sign"]),
               "--recipient", str(keys["fleet_pub"]), "-o", str(bundle)]
    unpack = [*EDGEPKG, "unpack", str(bundle), "--key", str(keys["fleet"]),
              "--trusted-key", str(keys["sign_pub"]), "-o", str(out)]
    zc = ["zstd", "-q", "-f", "-3", "-T2", str(model), "-o", str(zst)]
    zd = ["zstd", "-q", "-f", "-d", str(zst), "-o", str(zout)]
    samples: dict[str, list[float]] = {}
    pkg_ratios: list[float] = []
    unpack_ratios: list[float] = []

    def add(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    for _ in range(repeat):  # interleaved, so load changes hit both sides alike
        t, m = _timed(zc)
        add("zstd_c_s", t), add("zstd_c_mb", m)
        t, _ = _timed(zc, zst, durable=True)
        add("zstd_c_durable_s", t)
        t, m = _timed(package)
        add("pkg_s", t), add("pkg_mb", m)
        pkg_ratios.append(t / samples["zstd_c_durable_s"][-1])
        t, m = _timed(zd)
        t += _sha_time(zout)
        add("zstd_d_s", t), add("zstd_d_mb", m)
        t, _ = _timed(zd, zout, durable=True)
        add("zstd_d_durable_s", t + _sha_time(zout))
        t, m = _timed(unpack)
        add("unpack_s", t), add("unpack_mb", m)
        unpack_ratios.append(t / samples["zstd_d_durable_s"][-1])
    assert sha256_file(out) == sha256_file(model)
    r: dict[str, float | str] = {"size_mb": size_mb, "kind": kind}
    # Spread of the per-run durable ratios (each run's baseline measured right before it).
    r["pkg_spread"] = f"{min(pkg_ratios):.2f}-{max(pkg_ratios):.2f}"
    r["unpack_spread"] = f"{min(unpack_ratios):.2f}-{max(unpack_ratios):.2f}"
    for key, values in samples.items():
        r[key] = max(values) if key.endswith("_mb") else statistics.median(values)
    r["bundle_pct"] = 100 * bundle.stat().st_size / model.stat().st_size
    r["zstd_pct"] = 100 * zst.stat().st_size / model.stat().st_size
    for p in (model, bundle, out, zst, zout):
        p.unlink()
    return r


def _sha_time(path: Path) -> float:
    start = time.perf_counter()
    sha256_file(path)
    return time.perf_counter() - start


def make_keys(work: Path) -> dict[str, Path]:
    env = dict(os.environ, EDGEPKG_ALLOW_FILE_KEYS="1")
    kdir = work / "keys"
    subprocess.run([*EDGEPKG, "keys", "create", "release", "--kind", "signing", "--dir", str(kdir)],
                   check=True, stdout=subprocess.DEVNULL, env=env)
    subprocess.run([*EDGEPKG, "keys", "create", "fleet", "--kind", "recipient", "--dir", str(kdir)],
                   check=True, stdout=subprocess.DEVNULL, env=env)
    found = {p.name: p for p in kdir.iterdir()}

    def pick(prefix: str, public: bool) -> Path:
        for name, p in found.items():
            if name.startswith(prefix) and (".pub" in name or "public" in name) == public:
                return p
        raise SystemExit(f"key {prefix} not found in {sorted(found)}")

    return {"sign": pick("release", False), "sign_pub": pick("release", True),
            "fleet": pick("fleet", False), "fleet_pub": pick("fleet", True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--sizes", default="64,512", help="comma-separated sizes in MB")
    ap.add_argument("--workdir", help="scratch directory (default: a temp dir)")
    ap.add_argument("--kinds", default="float32,random", help="engine contents: float32, random")
    ap.add_argument("--markdown", help="write the results table to this file")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per size (median)")
    args = ap.parse_args()
    if not shutil.which("zstd"):
        raise SystemExit("the zstd command is needed as the baseline (apt-get install zstd)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgepkg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    keys = make_keys(work)
    rows = [
        bench_size(work, int(s), kind, keys, args.repeat)
        for s in args.sizes.split(",")
        for kind in args.kinds.split(",")
    ]
    lines = [
        (
            "| engine | size | package | zstd -3 -T2 | ratio | + fsync | ratio (durable) | spread "
            "| unpack | zstd -d + sha256 | ratio | + fsync | ratio (durable) | spread "
            "| package RSS | unpack RSS | zstd RSS | bundle % | zstd % |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = {k: v for k, v in r.items() if isinstance(v, (int, float))}
        lines.append(
            f"| {r['kind']} | {r['size_mb']} MB | {f['pkg_s']:.2f} s | {f['zstd_c_s']:.2f} s | "
            f"{f['pkg_s'] / f['zstd_c_s']:.2f}x | {f['zstd_c_durable_s']:.2f} s | "
            f"**{f['pkg_s'] / f['zstd_c_durable_s']:.2f}x** | {r['pkg_spread']} | "
            f"{f['unpack_s']:.2f} s | {f['zstd_d_s']:.2f} s | "
            f"{f['unpack_s'] / f['zstd_d_s']:.2f}x | "
            f"{f['zstd_d_durable_s']:.2f} s | **{f['unpack_s'] / f['zstd_d_durable_s']:.2f}x** | "
            f"{r['unpack_spread']} | {f['pkg_mb']:.0f} MB | {f['unpack_mb']:.0f} MB | "
            f"{f['zstd_c_mb']:.0f} MB | {f['bundle_pct']:.1f} | {f['zstd_pct']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(
            "# Packaging benchmark (bench/package.py)\n\n"
            f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end. "
            "Same file, same run, page cache warm, `sync` before every step, median of "
            f"{args.repeat} interleaved runs (spread: min-max of the per-run durable ratios). "
            "edgepkg's output is written atomically and fsynced; "
            "'durable' baselines add an fsync of zstd's output (`sync FILE`) so both sides "
            "guarantee the same thing.\n\n"
            + table + "\n"
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
