"""Scale-out benchmark: N app nodes behind nginx on one PostgreSQL, N = 1, 2, 4.

    .venv/bin/python bench/cluster.py [--nodes 1 --nodes 2 --nodes 4] [--devices 1000]
        [--seconds 10] [--clients 2] [--threads 8] [--server-threads 4] [--json]

Starts ONE temporary PostgreSQL cluster (as the test fixture does), migrates it and registers
the devices (real P-256 keys), writes a TUF ``metadata/timestamp.json``, then for each N:

- N app nodes, each ``edgepkg-server run --workers 1 --worker-class gthread`` (one gunicorn
  worker: a node is the unit one would put on its own VM) on 127.0.0.1 ports P..P+N-1;
- nginx (Debian's) in front: an ``upstream`` of the N nodes with keep-alive connections, and
  ``location /tuf/ { alias <repo>/; }`` so the TUF files are served as a CDN would, never by
  the app;
- the load generator of ``bench/server_load.py`` (separate processes, 4 in 5 requests signed
  check-ins, 1 in 5 timestamp polls, keep-alive) against nginx for ``--seconds``.

Reported per N: throughput, p50/p99 per kind, errors, CPU-ms per request of the app nodes
(summed), PostgreSQL and nginx (from /proc), the spread of app CPU over the nodes, and how often
a PostgreSQL backend was seen waiting on a lock (``pg_stat_activity.wait_event_type = 'Lock'``,
sampled every 100 ms): on a 2-core box throughput cannot grow with N, but the CPU per request
must stay flat and lock waits near zero, or something serialises (a lock, a hot row, a single
scheduler). Everything is on loopback, in temp dirs, and stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import server_load as sl  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from tests.fixtures.postgres import PostgresCluster, _pg_bin  # noqa: E402
from update_server import schema  # noqa: E402
from update_server._crypto import device_key_id, new_device_key, public_pem  # noqa: E402
from update_server.db import Database, utcnow  # noqa: E402
from update_server.devices.models import Device  # noqa: E402

NGINX_CONF = """\
{user}worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream app {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        # TUF repository: static files, as a CDN would serve them (devices trust signatures).
        location /tuf/ {{
            alias {repo}/;
        }}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def _wait_http(port: int, path: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers 200 on 127.0.0.1:{port}{path} after {seconds:.0f} s")


def _start_nodes(n: int, env: dict[str, str], server_threads: int) -> list[subprocess.Popen[bytes]]:
    nodes = []
    for _ in range(n):
        port = sl._free_port()
        argv = [
            sys.executable, "-m", "update_server", "run",
            "--bind", f"127.0.0.1:{port}", "--workers", "1",
            "--worker-class", "gthread", "--threads", str(server_threads), "--no-access-log",
            "--gunicorn-arg=--log-level=warning",
        ]  # fmt: skip
        p = subprocess.Popen(argv, env=env, cwd=str(ROOT), start_new_session=True)
        p.port = port  # type: ignore[attr-defined]
        nodes.append(p)
    for p in nodes:
        _wait_http(p.port, "/healthz")  # type: ignore[attr-defined]
    return nodes


def _start_nginx(work: Path, ports: list[int], repo: Path) -> tuple[subprocess.Popen[bytes], int]:
    work.mkdir(parents=True, exist_ok=True)
    port = sl._free_port()
    conf = NGINX_CONF.format(
        user="user root;\n" if os.geteuid() == 0 else "",  # temp dirs are 0700
        work=work,
        port=port,
        repo=repo,
        servers="\n".join(f"        server 127.0.0.1:{p};" for p in ports),
    )
    (work / "nginx.conf").write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = subprocess.Popen(
        [nginx, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
        start_new_session=True,
    )
    _wait_http(port, "/tuf/metadata/timestamp.json")
    return p, port


class LockSampler:
    """Samples PostgreSQL backends waiting on a heavyweight lock (row or table) every 100 ms."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, poolclass=None)
        self.samples = 0
        self.waiting = 0
        self.max_waiting = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        q = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        with self.engine.connect() as c:
            while not self._stop.wait(0.1):
                n = int(c.execute(q).scalar() or 0)
                c.rollback()
                self.samples += 1
                self.waiting += n > 0
                self.max_waiting = max(self.max_waiting, n)

    def __enter__(self) -> LockSampler:
        self._t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._t.join()
        self.engine.dispose()


def run_n(
    n: int, args: argparse.Namespace, env: dict[str, str], url: str, pg_pid: int,
    repo: Path, work: Path, shares: list[list[bytes]],
) -> dict[str, Any]:  # fmt: skip
    nodes = _start_nodes(n, env, args.server_threads)
    nginx: subprocess.Popen[bytes] | None = None
    try:
        nginx, lb_port = _start_nginx(work / f"nginx-{n}", [p.port for p in nodes], repo)  # type: ignore[attr-defined]
        q: Any = mp.get_context("fork").Queue()
        sl._run_clients(lb_port, shares, min(3.0, args.seconds), args.threads, q)  # warm-up
        node_cpu0 = [sl._proc_cpu(sl._children(p.pid)) for p in nodes]
        pg0 = sl._proc_cpu(sl._children(pg_pid))
        ngx0 = sl._proc_cpu(sl._children(nginx.pid))
        busy0, _ = sl._cpu_total()
        t0 = time.monotonic()
        with LockSampler(url) as locks:
            results, client_cpu = sl._run_clients(lb_port, shares, args.seconds, args.threads, q)
        elapsed = time.monotonic() - t0
        busy1, _ = sl._cpu_total()
        node_cpu = [sl._proc_cpu(sl._children(p.pid)) - c0 for p, c0 in zip(nodes, node_cpu0)]
        pg_cpu = sl._proc_cpu(sl._children(pg_pid)) - pg0
        ngx_cpu = sl._proc_cpu(sl._children(nginx.pid)) - ngx0
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(timeout=30)
        for p in nodes:
            os.killpg(p.pid, signal.SIGTERM)
        for p in nodes:
            p.wait(timeout=30)
    ok_c = [d for k, d, s in results if k == "checkin" and s == 200]
    ok_t = [d for k, d, s in results if k == "timestamp" and s == 200]
    n_ok = max(1, len(ok_c) + len(ok_t))
    app = sum(node_cpu)
    busy = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
    return {
        "nodes": n,
        "seconds": round(elapsed, 1),
        "requests_per_s": round(n_ok / elapsed, 1),
        "checkins_per_s": round(len(ok_c) / elapsed, 1),
        "checkin_p50_ms": round(sl._pct(ok_c, 50), 1),
        "checkin_p99_ms": round(sl._pct(ok_c, 99), 1),
        "timestamp_p50_ms": round(sl._pct(ok_t, 50), 1),
        "timestamp_p99_ms": round(sl._pct(ok_t, 99), 1),
        "errors": sum(1 for k, _, s in results if k == "error" or s != 200),
        # Check-ins are the app's work (timestamps never reach it): CPU per check-in.
        "app_cpu_ms_per_checkin": round(1000 * app / max(1, len(ok_c)), 2),
        "db_cpu_ms_per_checkin": round(1000 * pg_cpu / max(1, len(ok_c)), 2),
        "nginx_cpu_ms_per_request": round(1000 * ngx_cpu / n_ok, 3),
        "client_cpu_ms_per_request": round(1000 * client_cpu / n_ok, 2),
        "app_cpu_share_per_node": [round(c / app, 2) if app else None for c in node_cpu],
        "lock_wait_samples": f"{locks.waiting}/{locks.samples}",
        "max_backends_waiting_on_lock": locks.max_waiting,
        "cpu_cores_busy": round(busy / elapsed, 2),
        "cpu_share_others": round(1 - (app + pg_cpu + ngx_cpu + client_cpu) / busy, 2)
        if busy
        else None,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, action="append", help="app nodes (repeat; 1 2 4)")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=2, help="load generator processes")
    p.add_argument("--threads", type=int, default=8, help="connections per client process")
    p.add_argument("--server-threads", type=int, default=4, help="gthread threads per node")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    bin_dir = _pg_bin()
    if bin_dir is None or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        print("needs Debian's postgresql and nginx packages", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="edgepkg-cluster-"))
    # its own temp dir: start() hands it to the postgres user when running as root
    cluster = PostgresCluster(bin_dir, Path(tempfile.mkdtemp(prefix="edgepkg-cluster-pg-")))
    cluster.start()
    try:
        url = cluster.create_database("bench")
        schema.upgrade(url)
        keys = [new_device_key() for _ in range(args.devices)]
        db = Database(url)
        now = utcnow()
        with db.session() as s:
            for k in keys:
                s.add(Device(id=device_key_id(k), public_key_pem=public_pem(k), tags=["bench"],
                             facts={}, created_at=now))  # fmt: skip
        db.dispose()
        repo = work / "repo"
        (repo / "metadata").mkdir(parents=True)
        (repo / "metadata" / "timestamp.json").write_text(
            json.dumps({"signed": {"_type": "timestamp", "version": 1,
                                   "meta": {"snapshot.json": {"version": 1}}}, "signatures": []})
        )  # fmt: skip
        env = dict(os.environ)
        env.update(
            {
                "EDGEPKG_SERVER_DATABASE_URL": url,
                "EDGEPKG_SERVER_REPO_DIR": str(repo),
                "EDGEPKG_SERVER_SECRET_KEY": "bench-secret",
                "EDGEPKG_SERVER_DB_POOL_SIZE": str(max(5, args.server_threads)),
                "EDGEPKG_SERVER_PROXY_HOPS": "1",
                "PYTHONPATH": str(ROOT),
            }
        )
        ders = [
            k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
            for k in keys
        ]  # fmt: skip
        shares = [ders[i :: args.clients] for i in range(args.clients)]
        pg_pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        results = []
        for n in args.nodes or [1, 2, 4]:
            env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"prom-{n}-", dir=work)
            r = run_n(n, args, env, url, pg_pid, repo, work, shares)
            results.append(r)
            if not args.json:
                print(json.dumps(r), flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"devices": args.devices, "cores": os.cpu_count(), "runs": results},
                         indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
