"""Bytes a fleet downloads for a new release: today's last-K=2 deltas vs fleet-aware deltas.

A model (random float32 tensors, fixed seeds) goes through 5 releases 1.0.0 ... 5.0.0; each
release retrains three regions of 4 % of the weights at new places, so older versions differ
more from the newest. All five are published (real bundles, real TUF repository), then 6.0.0 is
published with a delta from *every* earlier release (``choose_delta_bases`` with all bases; each
delta is a real ``edgepkg.delta`` bundle subject to the 0.9 size margin). A policy then decides
which of those deltas would exist, with the same function ``publish`` uses:

  last-K=2           today's rule: deltas from 5.0.0 and 4.0.0 only
  fleet top-4        ``--deltas 0 --delta-from-fleet``: the 4 versions most devices run
  fleet top-4 + K=2  ``--delta-from-fleet`` with the default K (what publish does)

A device downloads its delta when one from its version exists, else the full bundle. Two fleets
of 1000 devices over 1.0.0 ... 5.0.0: "lagging" 40/25/15/12/8 % (most on old versions) and
"current" 8/12/15/25/40 %.

    .venv/bin/python bench/fleet_deltas.py                # 24 MB model, ~10 s on 2 cores
    .venv/bin/python bench/fleet_deltas.py --size-mb 2    # quick
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1 << 20
OLD = ["1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"]
NEW = "6.0.0"
FLEETS = {
    "lagging 40/25/15/12/8 %": [400, 250, 150, 120, 80],
    "current 8/12/15/25/40 %": [80, 120, 150, 250, 400],
}
POLICIES = {  # name -> (last K, fleet bases)
    "last-K=2 (today)": (2, 0),
    "fleet top-4": (0, 4),
    "fleet top-4 + K=2": (2, 4),
}


def _lineage(size: int) -> list[bytes]:
    w = np.random.default_rng(1).standard_normal(size // 4).astype(np.float32)
    out = [w.tobytes()]
    region = len(w) // 25  # 4 %
    for i in range(1, len(OLD) + 1):
        rng = np.random.default_rng(100 + i)
        w = w.copy()
        for start in rng.integers(0, len(w) - region, size=3):
            w[start : start + region] = rng.standard_normal(region).astype(np.float32)
        out.append(w.tobytes())
    return out


def _publish_all(work: Path, size: int) -> tuple[int, dict[str, int], float]:
    """Publish 1.0.0..5.0.0, then 6.0.0 with a delta from each; (full B, {base: delta B}, s)."""
    from edgepkg import keys as ekeys, repo as erepo
    from edgepkg.bundle import write_bundle
    from edgepkg.repo import FleetVersions

    kd = work / "keys"
    roles = {r: [str(ekeys.create_key(r, "signing", directory=kd).private_ref)]
             for r in ("root", "targets", "snapshot", "timestamp")}
    release = ekeys.create_key("release", "signing", directory=kd)
    archive = ekeys.create_key("archive", "recipient", directory=kd)
    fleet_key = ekeys.create_key("fleet", "recipient", directory=kd)
    repo = work / "repo"
    erepo.init_repo(repo, roles, release_signer=release.private_ref,
                    archive_key=archive.private_ref, recipients=[str(fleet_key.public_path)])
    signer = ekeys.load_signer(release.private_ref)

    def bundle(version: str, data: bytes) -> Path:
        src = work / f"m-{version}.bin"
        src.write_bytes(data)
        out = work / f"m-{version}.edgepkg"
        write_bundle(src, out, manifest_fields={"name": "m", "version": version, "format": "raw"},
                     signer=signer, recipients=[fleet_key.public_key, archive.public_key])
        src.unlink()
        return out

    data = _lineage(size)
    erepo.publish(repo, [bundle(v, d) for v, d in zip(OLD, data, strict=False)], deltas=0)
    everyone = FleetVersions("m", dict.fromkeys(OLD, 1))
    t0 = time.perf_counter()
    result = erepo.publish(repo, [bundle(NEW, data[-1])], deltas=0,
                           fleet=lambda _name: everyone, delta_max_bases=len(OLD))
    seconds = time.perf_counter() - t0
    full = next(p.length for p in result.published if p.kind == "full")
    deltas = {p.base_version or "": p.length for p in result.published if p.kind == "delta"}
    return full, deltas, seconds


def _fleet_bytes(counts: list[int], bases: list[str], full: int, deltas: dict[str, int]) -> int:
    return sum(n * (deltas[v] if v in bases and v in deltas else full)
               for v, n in zip(OLD, counts, strict=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=24.0, help="model size (default 24 MB)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    from edgepkg.repo import choose_delta_bases

    size = int(args.size_mb * MB) // 4 * 4
    with tempfile.TemporaryDirectory(prefix="bench-fleet-deltas-") as tmp:
        full, deltas, seconds = _publish_all(Path(tmp), size)

    print(f"model {size / MB:.1f} MB; full bundle {NEW}: {full / MB:.2f} MB; publish with "
          f"{len(deltas)} deltas {seconds:.1f} s")
    print("| base | delta MB | of full |")
    print("|---|---|---|")
    for v in OLD:
        cells = f"{deltas[v] / MB:.2f} | {deltas[v] / full:.0%}" if v in deltas else "— | skipped"
        print(f"| {v} | {cells} |")
    results: dict[str, dict[str, object]] = {}
    for fleet_name, counts in FLEETS.items():
        fleet = dict(zip(OLD, counts, strict=True))
        baseline = None
        print(f"\nfleet {fleet_name} ({sum(counts)} devices)")
        print("| policy | delta bases | fleet downloads MB | vs last-K=2 | per device MB |")
        print("|---|---|---|---|---|")
        for policy, (k, n) in POLICIES.items():
            bases = choose_delta_bases(NEW, OLD, last_k=k, fleet=fleet, max_bases=n)
            total = _fleet_bytes(counts, bases, full, deltas)
            baseline = baseline or total
            print(f"| {policy} | {', '.join(sorted(bases))} | {total / MB:,.0f} | "
                  f"{total / baseline:.2f}x | {total / sum(counts) / MB:.2f} |")
            results.setdefault(fleet_name, {})[policy] = {
                "bases": bases, "bytes": total, "ratio": round(total / baseline, 3)}
    if args.json:
        args.json.write_text(json.dumps({"full": full, "deltas": deltas,
                                         "publish_s": seconds, "fleets": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
