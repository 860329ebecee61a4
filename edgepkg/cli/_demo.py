"""``edgepkg demo``: the whole fleet release end to end on embedded defaults (README command 1).

Exit 0 only when every expectation held (each one is listed in the output); 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a whole fleet release end to end (keys, TUF repo, server, devices, rollouts)",
        description=(
            "Train three versions of a small classifier, package and publish them with deltas, "
            "start the update server and a fleet of real device updaters, roll v2 out in stages "
            "and watch the canaries reject a regressed v3. No configuration needed."
        ),
    )
    p.add_argument(
        "--workdir",
        help="workspace directory (new or empty; default: a temp dir, "
        "removed after a successful run)",
    )
    p.add_argument("--devices", type=int, help="fleet size (default 10; 4 with --quick)")
    p.add_argument(
        "--quick", action="store_true", help="a shorter configuration: 4 devices, less training"
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the server and the fleet running until Ctrl-C",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument(
        "--screenshot",
        metavar="PNG",
        help="save a dashboard screenshot of the paused v3 rollout (headless Chromium)",
    )
    p.add_argument(
        "--no-hsm", action="store_true", help="use file keys even when SoftHSM2 is installed"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edgepkg.demo import DemoConfig, format_report, run_demo
    from edgepkg.errors import UsageError

    if args.devices is None:
        args.devices = 4 if args.quick else 10
    if not 1 <= args.devices <= 100:
        raise UsageError("--devices must be between 1 and 100")
    if args.port is not None and not 1024 <= args.port <= 65535:
        raise UsageError("--port must be between 1024 and 65535")
    config = DemoConfig(
        workdir=args.workdir,
        devices=args.devices,
        quick=args.quick,
        keep_running=args.keep_running,
        port=args.port,
        screenshot=args.screenshot,
        use_hsm=not args.no_hsm,
    )
    report = run_demo(config)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    sys.stdout.flush()
    return 0 if report.ok else 1
