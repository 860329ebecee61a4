#!/usr/bin/env python3
"""Benchmark: `edgepkg package` / `edgepkg unpack` vs plain zstd on the same file, same run.

A float32 engine-like file (TensorRT header + normally distributed weights, fixed seed) at each
size; for each step: wall time and the peak RSS of that process alone (os.wait4). Targets
(issue 2): package <= 1.3x `zstd -3 -T2`, unpack <= 1.5x `zstd -d` + SHA-256, peak RSS <= 150 MB
at every size (flat memory).

    python bench/package.py [--sizes 64,512] [--workdir DIR] [--markdown docs/bench/package.md]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EDGEPKG = [sys.executable, "-m", "edgepkg.cli"]


def make_engine(path: Path, size_mb: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    header = bytearray(64)
    header[0:4] = b"ftrt"
    header[24:27] = bytes([10, 3, 0])
    with open(path, "wb") as fh:
        fh.write(header)
        remaining = size_mb * (1 << 20) - len(header)
        while remaining > 0:
            n = min(remaining, 16 << 20) // 4 * 4 or remaining
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


def bench_size(work: Path, size_mb: int, keys: dict[str, Path]) -> dict[str, float]:
    model = work / f"engine-{size_mb}.plan"
    make_engine(model, size_mb)
    bundle = work / f"engine-{size_mb}.edgepkg"
    out = work / f"engine-{size_mb}.out"
    zst = work / f"engine-{size_mb}.zst"
    zout = work / f"engine-{size_mb}.zout"
    subprocess.run(["sync"], check=True)
    r: dict[str, float] = {"size_mb": size_mb}
    # Warm the page cache for both contenders alike.
    sha256_file(model)
    r["zstd_c_s"], r["zstd_c_mb"] = run(["zstd", "-q", "-f", "-3", "-T2", str(model), "-o", str(zst)])
    r["pkg_s"], r["pkg_mb"] = run([
        *EDGEPKG,
        "package", str(model), "--name", "engine", "--version", "1.0.0", "--require", "gpu_sm=87",
        "--sign-key", str(keys["sign"]), "--recipient", str(keys["fleet_pub"]),
        "-o", str(bundle)], stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    r["zstd_d_s"], r["zstd_d_mb"] = run(["zstd", "-q", "-f", "-d", str(zst), "-o", str(zout)])
    sha256_file(zout)
    r["zstd_d_s"] = time.perf_counter() - t0
    r["unpack_s"], r["unpack_mb"] = run(EDGEPKG + [
        "unpack", str(bundle), "--key", str(keys["fleet"]), "--trusted-key", str(keys["sign_pub"]),
        "-o", str(out)], stdout=subprocess.DEVNULL)
    assert sha256_file(out) == sha256_file(model)
    r["bundle_pct"] = 100 * bundle.stat().st_size / model.stat().st_size
    r["zstd_pct"] = 100 * zst.stat().st_size / model.stat().st_size
    for p in (model, bundle, out, zst, zout):
        p.unlink()
    return r


def make_keys(work: Path) -> dict[str, Path]:
    env = dict(os.environ, EDGEPKG_ALLOW_FILE_KEYS="1")
    kdir = work / "keys"
    subprocess.run(EDGEPKG + ["keys", "create", "release", "--kind", "signing", "--dir", str(kdir)],
                   check=True, stdout=subprocess.DEVNULL, env=env)
    subprocess.run(EDGEPKG + ["keys", "create", "fleet", "--kind", "recipient", "--dir", str(kdir)],
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
    ap.add_argument("--markdown", help="write the results table to this file")
    args = ap.parse_args()
    if not shutil.which("zstd"):
        raise SystemExit("the zstd command is needed as the baseline (apt-get install zstd)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgepkg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    keys = make_keys(work)
    rows = [bench_size(work, int(s), keys) for s in args.sizes.split(",")]
    lines = [
        (
            "| size | package s | zstd -3 -T2 s | ratio | unpack s | zstd -d + sha256 s | ratio "
            "| package RSS | unpack RSS | zstd -c RSS | bundle % | zstd % |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size_mb']} MB | {r['pkg_s']:.2f} | {r['zstd_c_s']:.2f} | "
            f"**{r['pkg_s'] / r['zstd_c_s']:.2f}x** | {r['unpack_s']:.2f} | {r['zstd_d_s']:.2f} | "
            f"**{r['unpack_s'] / r['zstd_d_s']:.2f}x** | {r['pkg_mb']} MB | {r['unpack_mb']} MB | "
            f"{r['zstd_c_mb']} MB | {r['bundle_pct']:.1f} | {r['zstd_pct']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(
            "# Packaging benchmark (bench/package.py)\n\n"
            f"Machine: {os.cpu_count()} cores. Same file, same run, page cache warm.\n\n"
            + table + "\n"
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
