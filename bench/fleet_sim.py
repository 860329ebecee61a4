"""Fleet simulator: up to 100,000 devices checking in against the cluster of bench/cluster.py.

    .venv/bin/python bench/fleet_sim.py [--devices 100000] [--nodes 2] [--seconds 90]
        [--poll 600] [--connections 32] [--dark-share 0.3] [--json]

One process, asyncio with raw keep-alive HTTP/1.1 streams (no client library: a thread per
device would not fit 100k). Starts one temporary PostgreSQL, ``--nodes`` app nodes and nginx
exactly as ``bench/cluster.py`` does, seeds the devices in bulk straight into the database
(real P-256 keys: the server verifies every signature), then every device sends a signed
check-in once per ``--poll`` seconds of wall time (the 5-minute poll compressed in time) at a
random phase, with +-10 % jitter per poll. Halfway through, ``--dark-share`` of the fleet goes
dark for ``--dark`` seconds and then reconnects within 2 s (a storm: a cell network coming back).

Reported: the achieved check-in rate and how far it lagged the schedule, p50/p99 latency in the
steady phase and in the storm, errors by kind, CPU per check-in (app nodes + PostgreSQL, /proc),
the database growth per check-in, and extrapolated to a real fleet at 5-minute polls:
CPU-seconds per 100k devices per day and database growth per 100k devices per day.

Not simulated in this version (see docs/benchmarks.md): enrollment through the API, events,
telemetry and a rollout moving through its stages.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cluster as cl  # noqa: E402
import server_load as sl  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402

from tests.fixtures.postgres import PostgresCluster, _pg_bin  # noqa: E402
from update_server import schema  # noqa: E402
from update_server.db import utcnow  # noqa: E402
from update_server.devices.models import Device  # noqa: E402
from update_server.testing import SoftwareDevice  # noqa: E402

BODY = json.dumps(
    {
        "models": {"detector": {"active_slot": "a", "slots": {
            "a": {"version": "1.0.0", "sha256": "ab" * 32}, "b": None}}},
        "state": "IDLE",
        "health": {"latency_p50_ms": 4.1, "latency_p95_ms": 9.3, "errors": 0, "last_metric": 0.93},
        "free_disk_bytes": 12_000_000_000,
        "last_error": None,
    }
).encode()  # fmt: skip
REAL_POLL_S = 300


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dev: SoftwareDevice
) -> int:
    path = f"/api/v1/devices/{dev.device_id}/checkin"
    headers = dev.signed_headers("POST", path, BODY)
    headers.setdefault("Content-Type", "application/json")
    head = [f"POST {path} HTTP/1.1", "Host: sim", f"Content-Length: {len(BODY)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + BODY)
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def simulate(
    port: int, devices: list[SoftwareDevice], args: argparse.Namespace
) -> dict[str, Any]:
    rnd = random.Random(7)
    t0 = time.monotonic()
    due = [(t0 + rnd.uniform(0, args.poll), i) for i in range(len(devices))]
    heapq.heapify(due)
    storm_at = t0 + args.seconds / 2
    dark = set(rnd.sample(range(len(devices)), int(args.dark_share * len(devices))))
    storm_done = False
    q: asyncio.Queue[tuple[float, int]] = asyncio.Queue(maxsize=args.connections * 4)
    lat: dict[str, list[float]] = {"steady": [], "storm": []}
    errors: dict[str, int] = {}
    lag: list[float] = []
    end = t0 + args.seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            when, i = await q.get()
            if i < 0:
                break
            start = time.monotonic()
            lag.append(start - when)
            phase = (
                "storm" if storm_at + args.dark <= start < storm_at + args.dark + 15 else "steady"
            )
            try:
                status = await _request(reader, writer, devices[i])
                if status == 200:
                    lat[phase].append(time.monotonic() - start)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(args.connections)]
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if not storm_done and now >= storm_at:
            # the dark devices miss their polls, then all reconnect within 2 s
            back = storm_at + args.dark
            due = [(back + rnd.uniform(0, 2), i) if i in dark else (w, i) for w, i in due]
            heapq.heapify(due)
            storm_done = True
        when, i = due[0]
        if when > now:
            await asyncio.sleep(min(when - now, 0.05))
            continue
        heapq.heapreplace(due, (when + args.poll * rnd.uniform(0.9, 1.1), i))
        await q.put((when, i))
    for _ in workers:
        await q.put((0.0, -1))
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - t0
    n = len(lat["steady"]) + len(lat["storm"])
    return {
        "elapsed_s": round(elapsed, 1),
        "checkins_ok": n,
        "checkins_per_s": round(n / elapsed, 1),
        "scheduled_per_s": round(len(devices) / args.poll, 1),
        "schedule_lag_p50_s": round(sl._pct(lag, 50) / 1000, 2),
        "schedule_lag_p99_s": round(sl._pct(lag, 99) / 1000, 2),
        "steady_p50_ms": round(sl._pct(lat["steady"], 50), 1),
        "steady_p99_ms": round(sl._pct(lat["steady"], 99), 1),
        "storm_checkins": len(lat["storm"]),
        "storm_p50_ms": round(sl._pct(lat["storm"], 50), 1),
        "storm_p99_ms": round(sl._pct(lat["storm"], 99), 1),
        "errors": errors,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--seconds", type=float, default=90.0, help="wall time of the simulation")
    p.add_argument("--poll", type=float, default=600.0, help="wall seconds between polls")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    p.add_argument("--dark-share", type=float, default=0.3)
    p.add_argument("--dark", type=float, default=20.0, help="seconds the dark devices miss")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    bin_dir = _pg_bin()
    if bin_dir is None:
        print("needs Debian's postgresql and nginx packages", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="edgepkg-fleet-"))
    pg = PostgresCluster(bin_dir, Path(tempfile.mkdtemp(prefix="edgepkg-fleet-pg-")))
    pg.start()
    nodes: list[Any] = []
    nginx = None
    try:
        url = pg.create_database("fleet")
        schema.upgrade(url)
        t = time.monotonic()
        devices = [SoftwareDevice() for _ in range(args.devices)]
        keygen_s = time.monotonic() - t
        engine = create_engine(url)
        now = utcnow()
        with engine.begin() as c:  # bulk seeding: enrollment's end state, without the API
            for k in range(0, len(devices), 5000):
                c.execute(insert(Device), [
                    {"id": d.device_id, "public_key_pem": d.public_key_pem, "tags": ["sim"],
                     "facts": {}, "created_at": now} for d in devices[k : k + 5000]])  # fmt: skip
        size = text("SELECT pg_database_size(current_database())")
        with engine.connect() as c:
            size0 = int(c.execute(size).scalar() or 0)
        repo = work / "repo"
        (repo / "metadata").mkdir(parents=True)
        (repo / "metadata" / "timestamp.json").write_text("{}")
        env = dict(os.environ)
        env.update({
            "EDGEPKG_SERVER_DATABASE_URL": url, "EDGEPKG_SERVER_REPO_DIR": str(repo),
            "EDGEPKG_SERVER_SECRET_KEY": "sim", "EDGEPKG_SERVER_PROXY_HOPS": "1",
            "EDGEPKG_SERVER_DB_POOL_SIZE": "5", "PYTHONPATH": str(ROOT),
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="prom-", dir=work),
        })  # fmt: skip
        nodes = cl._start_nodes(args.nodes, env, 4)
        nginx, port = cl._start_nginx(work / "nginx", [n.port for n in nodes], repo)
        pg_pid = int((pg.data / "postmaster.pid").read_text().split()[0])
        app0 = sum(sl._proc_cpu(sl._children(n.pid)) for n in nodes)
        pg0 = sl._proc_cpu(sl._children(pg_pid))
        cpu_self0 = time.process_time()
        result = asyncio.run(simulate(port, devices, args))
        app_s = sum(sl._proc_cpu(sl._children(n.pid)) for n in nodes) - app0
        pg_s = sl._proc_cpu(sl._children(pg_pid)) - pg0
        with engine.connect() as c:
            size1 = int(c.execute(size).scalar() or 0)
        engine.dispose()
        n = max(1, result["checkins_ok"])
        per_day_100k = 100_000 * 86_400 / REAL_POLL_S  # check-ins per 100k devices per day
        result.update({
            "devices": args.devices, "nodes": args.nodes, "poll_wall_s": args.poll,
            "dark_share": args.dark_share, "dark_s": args.dark, "keygen_s": round(keygen_s, 1),
            "app_cpu_ms_per_checkin": round(1000 * app_s / n, 2),
            "db_cpu_ms_per_checkin": round(1000 * pg_s / n, 2),
            "simulator_cpu_ms_per_checkin": round(1000 * (time.process_time() - cpu_self0) / n, 2),
            "db_bytes_after_seeding": size0,
            "db_growth_bytes_per_checkin": round((size1 - size0) / n, 1),
            "cpu_core_hours_per_100k_devices_day_at_5min": round(
                per_day_100k * (app_s + pg_s) / n / 3600, 1),
            "db_growth_mb_per_100k_devices_day_at_5min": round(
                per_day_100k * (size1 - size0) / n / 1e6, 1),
            "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        })  # fmt: skip
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(timeout=30)
        for node in nodes:
            os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            node.wait(timeout=30)
        pg.stop()
        shutil.rmtree(pg.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2 if args.json else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
