"""``edge-updater install-offline PATH``: the CLI of :mod:`device_updater.offline`.

Kept apart from the heavy module so ``edge-updater --help`` loads no TUF client.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from device_updater.config import Config


def register(sub: Any, make_agent: Callable[[Config], Any]) -> None:
    """``make_agent`` is the CLI's agent factory (passed in: importing the CLI from here would
    be an import circle)."""
    p = sub.add_parser(
        "install-offline", help="install from an offline (USB) package, without the server",
        description="Verify the package from 'edgepkg export-offline' (a directory or .tar) with "
                    "this device's TUF trust chain, then install through the normal validation "
                    "gate and A/B switch. Events are queued and sent when the device is next "
                    "online. Exit 0 when installed (or already running), 1 when refused.")
    p.add_argument("path", help="the offline package: a directory or an archive (.tar)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_install_offline, make_agent=make_agent)


def _cmd_install_offline(args: argparse.Namespace, config: Config) -> int:
    from device_updater.offline import install_offline

    agent = args.make_agent(config)
    agent.recover()
    try:
        result = install_offline(agent, args.path)
    finally:
        agent.mark_stopped()
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{result.model} {result.version}: {result.phase}; active version "
              f"{result.active_version or '-'}; {result.queued_events} events queued for the "
              "server")
        if result.phase == "trial":
            print("  the new model is active on trial: the daemon commits it after the app's "
                  "health reports (or rolls it back)")
        for e in result.errors:
            print(f"error: {e}")
    return 0 if result.ok else 1
