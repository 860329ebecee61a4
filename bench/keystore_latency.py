"""Device keystore latency: ECDSA sign and ECDH (the HPKE receiver's one private-key step) with
the key in a TPM 2.0 emulator (swtpm, through tpm2-pytss) vs a SoftHSM2 token (python-pkcs11),
measured in the same run on the same machine.

Each path is measured through the keystore's public methods, so the figures include what the
daemon pays per call: for the TPM, a fresh ESAPI connection per operation (see
device_updater/_tpm.py); for PKCS#11, edgepkg.keys' cached session. Also one full HPKE unwrap of
a data key (ECDH + key schedule + AES-GCM) per path.

    .venv/bin/python bench/keystore_latency.py            # 200 iterations each
    .venv/bin/python bench/keystore_latency.py -n 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _timed(fn: Callable[[], object], n: int) -> dict[str, float]:
    fn()  # warm-up (loads, first connection)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 3),
            "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 3),
            "mean_ms": round(statistics.fmean(samples), 3)}


def _ops(ks: Any) -> dict[str, Callable[[], object]]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgepkg import crypto

    pub = ks.ensure_device_key()
    rk = ks.recipient_key()
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    wrapped = crypto.wrap_data_key(crypto.new_data_key(), pub, b"bench")
    return {
        "sign": lambda: ks.sign(b"POST /api/v1/devices/x/checkin\n" + os.urandom(64)),
        "ecdh": lambda: rk.exchange(peer),
        "hpke_unwrap": lambda: crypto.unwrap_data_key(wrapped, rk, b"bench"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="iterations per operation")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    from device_updater.keystore import Pkcs11Keystore
    from device_updater.keystore_tpm import TpmKeystore
    from tests.fixtures.softhsm import init_token
    from tests.fixtures.swtpm import Swtpm

    if not shutil.which("swtpm") or not shutil.which("softhsm2-util"):
        print("needs swtpm and softhsm2-util", file=sys.stderr)
        return 1
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ks-bench-") as tmp:
        tpm = Swtpm(Path(tmp) / "tpm")
        (Path(tmp) / "tpm").mkdir()
        tpm.start()
        try:
            paths = {
                "swtpm (tpm2-pytss, TPM2_Sign / TPM2_ECDH_ZGen)":
                    TpmKeystore(tpm.tcti, Path(tmp) / "ks"),
                "SoftHSM2 (python-pkcs11, CKM_ECDSA / CKM_ECDH1_DERIVE)":
                    Pkcs11Keystore(init_token(f"bench-{os.getpid()}").uri()),
            }
            for name, ks in paths.items():
                results[name] = {op: _timed(fn, args.n) for op, fn in _ops(ks).items()}
        finally:
            tpm.stop()
    swtpm_version = subprocess.run(["swtpm", "--version"], capture_output=True,
                                   text=True).stdout.strip().splitlines()[0]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{swtpm_version}, n={args.n}\n")
    print("| keystore | operation | median ms | p95 ms | mean ms |")
    print("|---|---|---:|---:|---:|")
    for name, ops in results.items():
        for op, r in ops.items():
            print(f"| {name} | {op} | {r['median_ms']} | {r['p95_ms']} | {r['mean_ms']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
