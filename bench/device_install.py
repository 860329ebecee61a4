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


def _cpu_s(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def child(args: argparse.Namespace) -> None:
    """One install in this (child) process, through the daemon's own install functions.

    Prints JSON: wall time, CPU time and peak RSS. Untimed set-up for a delta: the full model
    is made active in slot ``a`` (as after a committed install) and, for ``delta`` (not
    ``delta-cold``), exported to the runtime dir like the daemon does at every switch.
    """
    from device_updater.install import install_delta, install_full
    from device_updater.keystore import FileKeystore
    from device_updater.slots import BundleSealer, ModelSummary, SlotStore
    from device_updater.tuf_client import DeviceFetcher, TufSession
    from edgepkg.bundle import verify_bundle
    from edgepkg.keys import load_public_key

    work = Path(args.work)
    ks = FileKeystore(work / "device")
    trusted = [load_public_key(str(work / "release.pub.pem"))]
    slots = SlotStore(work / "slots", sealer=BundleSealer(ks.recipient_key()))
    runtime = work / "runtime"
    shutil.rmtree(runtime, ignore_errors=True)
    if args.kind != "full":
        slots.switch_to("a")
        if args.kind == "delta":
            slots.export_plaintext("a", runtime)
    shutil.rmtree(work / "dl", ignore_errors=True)
    shutil.rmtree(work / "client", ignore_errors=True)
    cpu0 = _cpu_s(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    targets_url = f"{args.url}/targets/"
    fetcher = DeviceFetcher(resume_dir=work / "dl" / ".partial", resume_prefixes=(targets_url,))
    sess = TufSession(work / "client", f"{args.url}/metadata/", targets_url,
                      bootstrap_root=(work / "repo" / "metadata" / "1.root.json").read_bytes(),
                      fetcher=fetcher, target_dir=work / "dl")
    path = sess.fetch(sess.target_info(args.target))
    t_fetch = time.perf_counter() - t0
    info = verify_bundle(path, trusted)
    summary = ModelSummary.from_mapping(info.manifest.summary())
    # the candidate is the full release's summary (TUF custom in the agent)
    if info.manifest.delta:
        summary = ModelSummary.from_mapping(json.loads((work / "v2.summary.json").read_text()))
    keys = [ks.recipient_key()]
    if args.kind == "full":
        install_full(slots, args.slot, summary, path, keys=keys, trusted=trusted)
    else:
        scratch = runtime / ".work"
        scratch.mkdir(parents=True, mode=0o700)
        install_delta(slots, args.slot, summary, path, keys=keys, trusted=trusted,
                      workdir=scratch, runtime_dir=runtime)
        shutil.rmtree(scratch)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": round(wall, 3), "fetch_s": round(t_fetch, 3),
                      "cpu_s": round(_cpu_s(resource.RUSAGE_SELF) - cpu0, 3),
                      "peak_rss_mb": round(_peak_rss_mb(), 1),
                      "bytes_downloaded": path.stat().st_size}))


def _child(work: Path, url: str, kind: str, target: str, slot: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", "--work", str(work), "--url", url, "--kind", kind,
           "--target", target, "--slot", slot]
    if os.environ.get("BENCH_PROFILE"):
        cmd[1:1] = ["-m", "cProfile", "-o", f"{os.environ['BENCH_PROFILE']}.{kind}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _baseline(url: str, zst: Path, work: Path) -> dict[str, float]:
    """curl the target + ``zstd -d | sha256sum`` of the model: wall and CPU (children's)."""
    cpu0 = _cpu_s(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", str(work / "curl.bin"), url], check=True)
    subprocess.run(f"zstd -d -c -q {zst} | sha256sum > /dev/null", shell=True, check=True)
    wall = time.perf_counter() - t0
    (work / "curl.bin").unlink()
    return {"wall_s": round(wall, 3), "cpu_s": round(_cpu_s(resource.RUSAGE_CHILDREN) - cpu0, 3)}


def _setup(work: Path, size: int) -> None:
    """Keys, a TUF repository with v1 (full) and v2 (full + delta from v1), a device key."""
    from device_updater.keystore import FileKeystore
    from edgepkg import keys as ekeys, repo as erepo
    from edgepkg.bundle import write_bundle

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
    bundles = []
    for ver, data in (("1.0.0", v1), ("2.0.0", v2)):
        src = work / f"m-{ver}.bin"
        src.write_bytes(data)
        out = work / f"m-{ver}.edgepkg"
        m = write_bundle(src, out, manifest_fields={"name": "m", "version": ver, "format": "raw"},
                         signer=signer, recipients=[dev_pub, archive.public_key])
        (work / f"v{ver[0]}.summary.json").write_text(json.dumps(m.summary()))
        bundles.append(out)
        subprocess.run(["zstd", "-q", "-3", "-T0", str(src), "-o", str(src) + ".zst"],
                       check=True)
    del v1, v2
    erepo.publish(work / "repo", [bundles[0]])
    erepo.publish(work / "repo", [bundles[1]])
    for b in bundles:
        b.unlink()
    (work / "setup.done").write_text(str(size))


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs; medians reported")
    ap.add_argument("--keep", help="work directory to keep and reuse (set-up is slow)")
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

    from edgepkg import repo as erepo

    size = args.size_mb << 20
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-device-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        done = work / "setup.done"
        if not done.exists() or done.read_text() != str(size):
            shutil.rmtree(work)
            work.mkdir(parents=True)
            t = time.perf_counter()
            _setup(work, size)
            print(f"set-up {time.perf_counter() - t:.1f} s", file=sys.stderr)
        rels = {(r.version, r.kind): r for r in erepo.list_releases(work / "repo")}
        httpd, url = _serve(work / "repo")

        def file_url(rel: erepo.ReleaseTarget) -> str:
            rel_path = erepo.target_file(work / "repo", rel).relative_to(work / "repo" / "targets")
            return f"{url}/targets/{rel_path}"

        full_rel = rels[("1.0.0", "full")]
        delta_rel = rels.get(("2.0.0", "delta"))
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeat):
            (work / "slots" / "active").unlink(missing_ok=True)
            runs.setdefault("baseline_full", []).append(
                _baseline(file_url(full_rel), work / "m-1.0.0.bin.zst", work))
            runs.setdefault("full", []).append(
                _child(work, url, "full", full_rel.target_path, "a"))
            if delta_rel is None:
                continue
            runs.setdefault("baseline_delta", []).append(
                _baseline(file_url(delta_rel), work / "m-2.0.0.bin.zst", work))
            for kind in ("delta", "delta-cold"):
                runs.setdefault(kind, []).append(
                    _child(work, url, kind, delta_rel.target_path, "b"))
        httpd.shutdown()
        res: dict[str, object] = {"size_mb": args.size_mb, "repeat": args.repeat,
                                  "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                                  "runs": runs}
        med = {k: {f: _median([r[f] for r in v]) for f in v[0]} for k, v in runs.items()}
        res["median"] = med
        ratios = {}
        for kind, base in (("full", "baseline_full"), ("delta", "baseline_delta"),
                           ("delta-cold", "baseline_delta")):
            if kind in med:
                ratios[kind] = {
                    "wall_ratio": round(_median([d["wall_s"] / b["wall_s"] for d, b in
                                                 zip(runs[kind], runs[base], strict=True)]), 2),
                    "cpu_ratio": round(med[kind]["cpu_s"] / med[base]["cpu_s"], 2),
                    "peak_rss_mb": med[kind]["peak_rss_mb"],
                }
        if delta_rel is None:
            res["delta"] = "no delta published (not below the size margin)"
        res["ratios"] = ratios
        text = json.dumps(res, indent=1)
        print(text)
        if args.json:
            Path(args.json).write_text(text)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
