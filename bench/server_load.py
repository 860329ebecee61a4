"""Load benchmark of the update server: signed check-ins + TUF timestamp polls under gunicorn.

    .venv/bin/python bench/server_load.py [--devices 1000] [--seconds 20] [--workers 2]
        [--worker-class gthread|sync] [--server-threads 4] [--clients 2] [--threads 8]
        [--no-keepalive] [--server-root DIR] [--backend postgres --backend sqlite] [--json]

For each backend: migrate a fresh database (SQLite file in WAL mode, or a temporary PostgreSQL
cluster started like the test fixture), register N devices with real P-256 keys, start gunicorn
(default: W ``gthread`` workers x 4 threads, HTTP keep-alive, no access log) on 127.0.0.1, and
run C client *processes* x T threads for a fixed time. Each client request is a signed
``POST /api/v1/devices/<id>/checkin`` (4 in 5) or a ``GET /tuf/metadata/timestamp.json`` poll
(1 in 5); each client thread keeps one HTTP/1.1 connection open (``--no-keepalive``: a new TCP
connection per request).

Because the load generator and the server share a small, busy machine, throughput alone says
little. The result therefore also gives CPU-seconds per request, read from /proc for the
gunicorn processes (app), the PostgreSQL processes (db) and the client processes, and the
machine's load, so that the number of cores 500 check-ins/s needs can be extrapolated:
``cores = rate * (app_cpu + db_cpu) per request``. ``--server-root`` runs gunicorn on another
checkout's ``update_server`` (same schema), for a before/after comparison in one session.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script from the checkout: the imports below need ROOT on sys.path first (E402).
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from update_server import schema  # noqa: E402 (after the sys.path set-up above)
from update_server._crypto import device_key_id, new_device_key, public_pem  # noqa: E402 (after the sys.path set-up above)
from update_server.db import Database, utcnow  # noqa: E402 (after the sys.path set-up above)
from update_server.devices.models import Device  # noqa: E402 (after the sys.path set-up above)

CHECKIN_SHARE = 0.8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_total() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _proc_cpu(pids: list[int]) -> float:
    """CPU seconds of these processes, plus that of their children they have reaped (so a
    PostgreSQL backend or gunicorn worker that exited during the run still counts)."""
    total = 0.0
    for pid in pids:
        try:
            parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(float(x) for x in parts[11:15])  # utime stime cutime cstime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out.extend(_children(int(k)))
    return out


def _client_proc(
    port: int,
    keys_der: list[bytes],
    seconds: float,
    threads: int,
    q: Any,
    seed: int,
    keepalive: bool,
) -> None:
    from update_server.testing import SoftwareDevice

    devices = []
    for der in keys_der:
        d = SoftwareDevice.__new__(SoftwareDevice)
        d._key = serialization.load_der_private_key(der, None)  # type: ignore[assignment]
        d.public_key_pem = public_pem(d._key)  # type: ignore[arg-type]
        d.device_id = device_key_id(d._key)  # type: ignore[arg-type]
        devices.append(d)
    results: list[tuple[str, float, int]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    t_cpu0 = time.process_time()

    def run(tid: int) -> None:
        rnd = random.Random(seed * 1000 + tid)
        local: list[tuple[str, float, int]] = []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            if not keepalive:
                conn.close()
            try:
                if rnd.random() < CHECKIN_SHARE:
                    dev = rnd.choice(devices)
                    path = f"/api/v1/devices/{dev.device_id}/checkin"
                    body = json.dumps(
                        {
                            "models": {
                                "detector": {
                                    "active_slot": "a",
                                    "slots": {
                                        "a": {"version": "1.0.0", "sha256": "ab" * 32},
                                        "b": None,
                                    },
                                }
                            },
                            "state": "IDLE",
                            "health": {
                                "latency_p50_ms": 4.1,
                                "latency_p95_ms": 9.3,
                                "errors": 0,
                                "last_metric": 0.93,
                            },
                            "free_disk_bytes": 12_000_000_000,
                            "last_error": None,
                        }
                    ).encode()
                    headers = dev.signed_headers("POST", path, body)
                    t0 = time.perf_counter()
                    conn.request("POST", path, body=body, headers=headers)
                    kind = "checkin"
                else:
                    t0 = time.perf_counter()
                    conn.request("GET", "/tuf/metadata/timestamp.json")
                    kind = "timestamp"
                resp = conn.getresponse()
                resp.read()
                local.append((kind, time.perf_counter() - t0, resp.status))
            except (OSError, http.client.HTTPException):
                local.append(("error", 0.0, 0))
                conn.close()
        conn.close()
        with lock:
            results.extend(local)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q.put((results, time.process_time() - t_cpu0))


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] * 1000


def run_backend(backend: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cluster = None
    if backend == "postgres":
        from tests.fixtures.postgres import PostgresCluster, _pg_bin

        bin_dir = _pg_bin()
        if bin_dir is None:
            return {"backend": backend, "skipped": "PostgreSQL binaries not found"}
        base = Path(tempfile.mkdtemp(prefix="edgepkg-bench-pg-"))
        cluster = PostgresCluster(bin_dir, base)
        cluster.start()
        url = cluster.create_database("bench")
    else:
        url = f"sqlite:///{work / 'bench.db'}"
    try:
        schema.upgrade(url)
        keys = [new_device_key() for _ in range(args.devices)]
        db = Database(url)
        now = utcnow()
        with db.session() as s:
            for k in keys:
                s.add(
                    Device(
                        id=device_key_id(k),
                        public_key_pem=public_pem(k),
                        tags=["bench"],
                        facts={},
                        created_at=now,
                    )
                )
        db.dispose()
        repo = work / "repo"
        (repo / "metadata").mkdir(parents=True, exist_ok=True)
        (repo / "metadata" / "timestamp.json").write_text(
            json.dumps(
                {
                    "signed": {
                        "_type": "timestamp",
                        "version": 1,
                        "meta": {"snapshot.json": {"version": 1}},
                    },
                    "signatures": [],
                }
            )
        )
        port = _free_port()
        env = dict(os.environ)
        env.update(
            {
                "EDGEPKG_SERVER_DATABASE_URL": url,
                "EDGEPKG_SERVER_REPO_DIR": str(repo),
                "EDGEPKG_SERVER_SECRET_KEY": "bench-secret",
                "EDGEPKG_SERVER_DB_POOL_SIZE": str(max(5, args.server_threads)),
                "PROMETHEUS_MULTIPROC_DIR": str(Path(tempfile.mkdtemp(prefix="prom-", dir=work))),
            }
        )
        server_root = Path(args.server_root).resolve() if args.server_root else ROOT
        env["PYTHONPATH"] = str(server_root)
        gunicorn = [
            sys.executable,
            "-m",
            "gunicorn",
            "update_server.wsgi:app",
            "--chdir",
            str(server_root),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.workers),
            "--worker-class",
            args.worker_class,
            "--log-level",
            "warning",
            "--backlog",
            "2048",
        ]
        if args.worker_class == "gthread":
            gunicorn += ["--threads", str(args.server_threads), "--keep-alive", "75"]
        server = subprocess.Popen(gunicorn, env=env, cwd=str(server_root), start_new_session=True)
        try:
            for _ in range(200):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    c.request("GET", "/healthz")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("gunicorn did not start")
            ders = [
                k.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                for k in keys
            ]
            shares = [ders[i :: args.clients] for i in range(args.clients)]
            q: Any = mp.get_context("fork").Queue()
            # Warm-up (connections, caches), then the measured run.
            _run_clients(port, shares, min(3.0, args.seconds), args.threads, q, args.keepalive)
            pg_root = (
                int((cluster.data / "postmaster.pid").read_text().split()[0]) if cluster else 0
            )
            busy0, _ = _cpu_total()
            srv0 = _proc_cpu(_children(server.pid))
            pg0 = _proc_cpu(_children(pg_root)) if cluster else 0.0
            t0 = time.monotonic()
            load_before = Path("/proc/loadavg").read_text().split()[:3]
            results, client_cpu = _run_clients(
                port, shares, args.seconds, args.threads, q, args.keepalive
            )
            elapsed = time.monotonic() - t0
            busy1, _ = _cpu_total()
            srv_cpu = _proc_cpu(_children(server.pid)) - srv0
            pg_cpu = (_proc_cpu(_children(pg_root)) - pg0) if cluster else 0.0
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        hz = os.sysconf("SC_CLK_TCK")
        machine_busy = (busy1 - busy0) / hz
        ok_checkins = [d for k, d, s in results if k == "checkin" and s == 200]
        ok_ts = [d for k, d, s in results if k == "timestamp" and s == 200]
        errors = sum(1 for k, _, s in results if k == "error" or s != 200)
        n_ok = max(1, len(ok_checkins) + len(ok_ts))
        app_ms = 1000 * srv_cpu / n_ok
        db_ms = 1000 * pg_cpu / n_ok
        per_core = 1000 / (app_ms + db_ms) if app_ms + db_ms else float("nan")
        # 500 check-ins/s come with 125 timestamp polls/s in this 4:1 mix.
        cores_for_target = 625 * (app_ms + db_ms) / 1000
        return {
            "backend": backend,
            "server_root": str(server_root),
            "worker_class": args.worker_class,
            "keepalive": args.keepalive,
            "devices": args.devices,
            "workers": args.workers,
            "server_threads": args.server_threads if args.worker_class == "gthread" else 1,
            "client_processes": args.clients,
            "client_threads": args.threads,
            "seconds": round(elapsed, 1),
            "requests_per_s": round((len(ok_checkins) + len(ok_ts)) / elapsed, 1),
            "checkins_per_s": round(len(ok_checkins) / elapsed, 1),
            "checkin_p50_ms": round(_pct(ok_checkins, 50), 1),
            "checkin_p99_ms": round(_pct(ok_checkins, 99), 1),
            "timestamp_p50_ms": round(_pct(ok_ts, 50), 1),
            "timestamp_p99_ms": round(_pct(ok_ts, 99), 1),
            "errors": errors,
            "app_cpu_ms_per_request": round(app_ms, 2),
            "db_cpu_ms_per_request": round(db_ms, 2),
            "client_cpu_ms_per_request": round(1000 * client_cpu / n_ok, 2),
            "requests_per_core_s": round(per_core, 1),
            "cores_for_500_checkins_per_s": round(cores_for_target, 2),
            "cpu_cores_busy": round(machine_busy / elapsed, 2),
            "cpu_share_app": round(srv_cpu / machine_busy, 2) if machine_busy else None,
            "cpu_share_db": round(pg_cpu / machine_busy, 2) if machine_busy else None,
            "cpu_share_load_generator": round(client_cpu / machine_busy, 2)
            if machine_busy
            else None,
            "cpu_share_others": round(1 - (srv_cpu + pg_cpu + client_cpu) / machine_busy, 2)
            if machine_busy
            else None,
            "loadavg_before": load_before,
            "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
            "cores": os.cpu_count(),
        }
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.base, ignore_errors=True)


def _run_clients(
    port: int,
    shares: list[list[bytes]],
    seconds: float,
    threads: int,
    q: Any,
    keepalive: bool = True,
) -> tuple[list[tuple[str, float, int]], float]:
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_client_proc, args=(port, share, seconds, threads, q, i, keepalive))
        for i, share in enumerate(shares)
    ]
    for p in procs:
        p.start()
    results: list[tuple[str, float, int]] = []
    cpu = 0.0
    for _ in procs:
        r, c = q.get(timeout=seconds + 120)
        results.extend(r)
        cpu += c
    for p in procs:
        p.join()
    return results, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 1))
    p.add_argument("--worker-class", choices=["gthread", "sync"], default="gthread")
    p.add_argument("--server-threads", type=int, default=4, help="threads per gthread worker")
    p.add_argument(
        "--no-keepalive",
        dest="keepalive",
        action="store_false",
        help="a new TCP connection per request (as devices polling every few minutes do)",
    )
    p.add_argument("--server-root", help="run gunicorn on this checkout's update_server")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--backend", action="append", choices=["postgres", "sqlite"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    backends = args.backend or ["postgres", "sqlite"]
    work = Path(tempfile.mkdtemp(prefix="edgepkg-bench-"))
    try:
        results = [
            run_backend(b, args, work / b)
            for b in backends
            if (work / b).mkdir(parents=True) is None
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
