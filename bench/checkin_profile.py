"""Where one signed check-in spends its CPU: in-process profile of the real app on PostgreSQL.

    .venv/bin/python bench/checkin_profile.py [--devices 200] [--checkins 2000] [--top 25]
        [--backend postgres|sqlite] [--no-profile]

Builds the app with ``create_app`` on a fresh database (a temporary PostgreSQL cluster as the
test fixture starts, or SQLite), registers devices with real P-256 keys, and sends signed
check-ins through Flask's test client (no HTTP server, no network: the WSGI app's own cost).
Reports app CPU per check-in (this process's CPU time, the signing of the requests measured
apart and subtracted), PostgreSQL CPU per check-in (/proc), and, with the profiler on, the
functions by own time grouped into areas (signature, JSON, ORM/SQL, rollout, Flask, other).
The profiler inflates Python time, so the per-check-in costs come from a separate run without
it (``--no-profile``, or the first pass of the default run).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import server_load as sl  # noqa: E402

from tests.fixtures.postgres import PostgresCluster, _pg_bin  # noqa: E402
from update_server import schema  # noqa: E402
from update_server.app import create_app  # noqa: E402
from update_server.config import load_config  # noqa: E402
from update_server.db import Database, utcnow  # noqa: E402
from update_server.devices.models import Device  # noqa: E402
from update_server.testing import SoftwareDevice  # noqa: E402

AREAS = (
    ("signature", ("ec.py", "crypto.py", "_crypto.py", "hashes", "rust")),
    ("json", ("json/", "protocol/")),
    ("rollout", ("rollouts/",)),
    ("sql", ("sqlalchemy", "psycopg", "sqlite3")),
    ("flask/werkzeug", ("flask", "werkzeug")),
)


def _body() -> bytes:
    return json.dumps(
        {
            "models": {"detector": {"active_slot": "a", "slots": {
                "a": {"version": "1.0.0", "sha256": "ab" * 32}, "b": None}}},
            "state": "IDLE",
            "health": {"latency_p50_ms": 4.1, "latency_p95_ms": 9.3, "errors": 0,
                       "last_metric": 0.93},
            "free_disk_bytes": 12_000_000_000,
            "last_error": None,
        }
    ).encode()  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--checkins", type=int, default=2000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgepkg-prof-"))
    cluster = None
    pg_pid = 0
    if args.backend == "postgres":
        bin_dir = _pg_bin()
        if bin_dir is None:
            print("needs Debian's postgresql package", file=sys.stderr)
            return 1
        cluster = PostgresCluster(bin_dir, Path(tempfile.mkdtemp(prefix="edgepkg-prof-pg-")))
        cluster.start()
        url = cluster.create_database("bench")
        pg_pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    else:
        url = f"sqlite:///{work / 'bench.db'}"
    try:
        schema.upgrade(url)
        devices = [SoftwareDevice() for _ in range(args.devices)]
        db = Database(url)
        with db.session() as s:
            for d in devices:
                s.add(Device(id=d.device_id, public_key_pem=d.public_key_pem, tags=["bench"],
                             facts={}, created_at=utcnow()))  # fmt: skip
        db.dispose()
        (work / "repo" / "metadata").mkdir(parents=True)
        # A timestamp.json, as in a published repository: the release cache keys on it
        (work / "repo" / "metadata" / "timestamp.json").write_text("{}")
        app = create_app(load_config(env={}, database_url=url, repo_dir=str(work / "repo"),
                                     secret_key="bench"))  # fmt: skip
        client = app.test_client()
        body = _body()

        def requests(n: int) -> list[tuple[str, dict[str, str]]]:
            out = []
            for i in range(n):
                d = devices[i % len(devices)]
                path = f"/api/v1/devices/{d.device_id}/checkin"
                out.append((path, d.signed_headers("POST", path, body)))
            return out

        def run(reqs: list[tuple[str, dict[str, str]]]) -> tuple[float, float]:
            pg0 = sl._proc_cpu(sl._children(pg_pid)) if pg_pid else 0.0
            c0 = time.process_time()
            for path, headers in reqs:
                r = client.post(path, data=body, headers=headers,
                                content_type="application/json")  # fmt: skip
                if r.status_code != 200:
                    raise RuntimeError(f"check-in answered {r.status_code}: {r.get_data()!r}")
            app_s = time.process_time() - c0
            pg_s = (sl._proc_cpu(sl._children(pg_pid)) - pg0) if pg_pid else 0.0
            return app_s, pg_s

        run(requests(min(200, args.checkins)))  # warm-up: caches, pool, statement plans
        reqs = requests(args.checkins)  # signed before the clock starts: the device's cost
        app_s, pg_s = run(reqs)
        result: dict[str, Any] = {
            "backend": args.backend,
            "checkins": args.checkins,
            "app_cpu_ms_per_checkin": round(1000 * app_s / args.checkins, 3),
            "db_cpu_ms_per_checkin": round(1000 * pg_s / args.checkins, 3),
        }
        print(json.dumps(result), flush=True)
        if not args.no_profile:
            prof = cProfile.Profile()
            reqs = requests(args.checkins)
            prof.enable()
            run(reqs)
            prof.disable()
            st = pstats.Stats(prof)
            total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
            areas: dict[str, float] = {}
            for (file, _line, _fn), v in st.stats.items():  # type: ignore[attr-defined]
                area = next((a for a, keys in AREAS if any(k in file for k in keys)), "other")
                areas[area] = areas.get(area, 0.0) + v[2]
            print(
                json.dumps(
                    {
                        "own_time_share_by_area": {
                            k: round(v / total, 3)
                            for k, v in sorted(areas.items(), key=lambda x: -x[1])
                        }
                    }
                )
            )
            st.sort_stats("tottime").print_stats(args.top)
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
