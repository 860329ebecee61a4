"""Benchmark: device install of a large model from a local HTTP server, full and via delta.

Compares, in the same run, the device path (TUF-verified resumable download with the device
fetcher, bundle signature check, HPKE/AES-GCM decrypt + zstd through ``open_plaintext``, sealing
into an A/B slot; for a delta also exporting the old slot, applying the patch and hashing) with a
baseline of ``curl`` + ``zstd -d`` + ``sha256sum`` over the same bytes. Each measured install runs
in a child process so its peak RSS (``ru_maxrss``) is its own.

    .venv/bin/python bench/device_install.py --size-mb 512 [--json out.json]

Targets (issue 5): wall <= 1.5x baseline; peak RSS <= 150 MB (full), <= 300 MB (delta).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _model(size: int, seed: int, base: bytes | None = None) -> bytes:
    """float32 weights; a 'v2' changes 5 % of them (a head retrain)."""
    if base is None:
        return np.random.default_rng(seed).standard_normal(size // 4).astype(np.float32).tobytes()
    w = np.frombuffer(base, dtype=np.float32).copy()
    tail = len(w) // 20
    w[-tail:] = np.random.default_rng(seed).standard_normal(tail).astype(np.float32)
    return w.tobytes()


class _RangeHandler(SimpleHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        path = self.translate_path(self.path)
        rng = self.headers.get("Range")
        if not rng or not os.path.isfile(path):
            return super().send_head()
        start = int(rng.split("=")[1].split("-")[0])
        size = os.path.getsize(path)
        f = open(path, "rb")  # noqa: SIM115
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        return f


def _serve(directory: Path) -> tuple[ThreadingHTTPServer, str]:
    def handler(*a, **kw):  # type: ignore[no-untyped-def]
        return _RangeHandler(*a, directory=str(directory), **kw)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss survives execve and would show the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """One install in this (child) process; prints JSON with wall time and peak RSS."""
    from device_updater.keystore import FileKeystore
    from device_updater.slots import BundleSealer, ModelSummary, SlotStore
    from device_updater.tuf_client import DeviceFetcher, TufSession
    from edgepkg.bundle import open_plaintext, verify_bundle
    from edgepkg.keys import load_public_key

    work = Path(args.work)
    ks = FileKeystore(work / "device")
    trusted = [load_public_key(str(work / "release.pub.pem"))]
    slots = SlotStore(work / "slots", sealer=BundleSealer(ks.recipient_key()))
    t0 = time.perf_counter()
    targets_url = f"{args.url}/targets/"
    fetcher = DeviceFetcher(resume_dir=work / "dl" / ".partial", resume_prefixes=(targets_url,))
    sess = TufSession(work / "client" / args.kind, f"{args.url}/metadata/", targets_url,
                      bootstrap_root=(work / "repo" / "metadata" / "1.root.json").read_bytes(),
                      fetcher=fetcher, target_dir=work / "dl" / args.kind)
    path = sess.fetch(sess.target_info(args.target))
    info = verify_bundle(path, trusted)
    summary = ModelSummary.from_mapping(info.manifest.summary())
    keys = [ks.recipient_key()]
    if args.kind == "full":
        slots.write(summary, open_plaintext(path, keys=keys, trusted_keys=trusted), slot=args.slot)
    else:
        from edgepkg.delta import apply_delta

        tmp = work / "run"
        tmp.mkdir(exist_ok=True)
        old = slots.export_plaintext("a", tmp / "old")
        patch = tmp / "patch"
        with open(patch, "wb") as fh:
            fh.writelines(open_plaintext(path, keys=keys, trusted_keys=trusted))
        new = tmp / "new"
        apply_delta(old, patch, new, expected_sha256=summary.sha256,
                    expected_length=summary.length)
        with open(new, "rb") as src:
            slots.write(summary, iter(lambda: src.read(1 << 20), b""), slot=args.slot)
        shutil.rmtree(tmp)
    wall = time.perf_counter() - t0
    rss_mb = _peak_rss_mb()
    print(json.dumps({"wall_s": wall, "peak_rss_mb": rss_mb,
                      "bytes_downloaded": path.stat().st_size}))


def _child(work: Path, url: str, kind: str, target: str, slot: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--work", str(work), "--url", url, "--kind", kind,
         "--target", target, "--slot", slot],
        check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _baseline(url: str, zst: Path, work: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", str(work / "curl.bin"), url], check=True)
    subprocess.run(f"zstd -d -c -q {zst} | sha256sum > /dev/null", shell=True, check=True)  # noqa: S602
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work")
    ap.add_argument("--url")
    ap.add_argument("--kind")
    ap.add_argument("--target")
    ap.add_argument("--slot")
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0

    from device_updater.keystore import FileKeystore
    from edgepkg import keys as ekeys
    from edgepkg import repo as erepo
    from edgepkg.bundle import write_bundle

    size = args.size_mb << 20
    work = Path(tempfile.mkdtemp(prefix="bench-device-"))
    try:
        kd = work / "keys"
        roles = {r: [str(ekeys.create_key(r, "signing", directory=kd).private_ref)]
                 for r in ("root", "targets", "snapshot", "timestamp")}
        release = ekeys.create_key("release", "signing", directory=kd)
        shutil.copy(release.public_path, work / "release.pub.pem")
        archive = ekeys.create_key("archive", "recipient", directory=kd)
        ks = FileKeystore(work / "device")
        dev_pub = ks.ensure_device_key()
        (kd / "dev.pub.pem").write_bytes(ekeys.public_key_pem(dev_pub))
        erepo.init_repo(work / "repo", roles, release_signer=release.private_ref,
                        archive_key=archive.private_ref, recipients=[str(kd / "dev.pub.pem")])
        v1 = _model(size, 1)
        v2 = _model(size, 2, base=v1)
        signer = ekeys.load_signer(release.private_ref)
        recips = [dev_pub, archive.public_key]
        bundles = []
        for ver, data in (("1.0.0", v1), ("2.0.0", v2)):
            src = work / f"m-{ver}.bin"
            src.write_bytes(data)
            out = work / f"m-{ver}.edgepkg"
            write_bundle(src, out, manifest_fields={"name": "m", "version": ver, "format": "raw"},
                         signer=signer, recipients=recips)
            bundles.append(out)
        del v1, v2
        erepo.publish(work / "repo", [bundles[0]])
        erepo.publish(work / "repo", [bundles[1]])
        rels = {(r.version, r.kind): r for r in erepo.list_releases(work / "repo")}
        httpd, url = _serve(work / "repo")
        full_rel = rels[("1.0.0", "full")]
        full_url = f"{url}/targets/" + str(erepo.target_file(work / "repo", full_rel)
                                           .relative_to(work / "repo" / "targets"))
        zst = work / "m-1.0.0.bin.zst"
        subprocess.run(["zstd", "-q", "-3", "-T0", str(work / "m-1.0.0.bin"), "-o", str(zst)],
                       check=True)
        base_full = _baseline(full_url, zst, work)
        full = _child(work, url, "full", full_rel.target_path, "a")
        res = {"size_mb": args.size_mb, "baseline_full_s": base_full, "full": full,
               "full_ratio": full["wall_s"] / base_full}
        delta_rel = rels.get(("2.0.0", "delta"))
        if delta_rel is not None:
            zst2 = work / "m-2.0.0.bin.zst"
            subprocess.run(["zstd", "-q", "-3", "-T0", str(work / "m-2.0.0.bin"), "-o",
                            str(zst2)], check=True)
            d_url = f"{url}/targets/" + str(erepo.target_file(work / "repo", delta_rel)
                                            .relative_to(work / "repo" / "targets"))
            base_delta = _baseline(d_url, zst2, work)
            delta = _child(work, url, "delta", delta_rel.target_path, "b")
            res.update(baseline_delta_s=base_delta, delta=delta,
                       delta_ratio=delta["wall_s"] / base_delta)
        else:
            res["delta"] = "no delta published (not below the size margin)"
        httpd.shutdown()
        text = json.dumps(res, indent=1)
        print(text)
        if args.json:
            Path(args.json).write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
