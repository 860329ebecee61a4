"""Fleet-aware delta options of ``edgepkg publish`` and ``edgepkg repo deltas``.

Kept apart from ``_repo`` so the delta-base options are defined once for both commands.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgepkg.cli._common import print_json

FLEET_HELP = (
    "make deltas from the versions the fleet runs: an update-server base URL (reads "
    "/api/v1/fleet/versions?model=NAME with the token in --server-token-env) or a JSON file "
    '{"model": NAME, "versions": {VERSION: DEVICES, ...}}'
)


def add_fleet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--delta-from-fleet", metavar="SOURCE", help=FLEET_HELP)
    p.add_argument("--delta-max-bases", type=int, metavar="N",
                   help="with --delta-from-fleet: deltas from the N versions most devices run "
                        "(default 4), in addition to the last K releases")
    p.add_argument("--server-token-env", metavar="VAR",
                   help="environment variable holding an operator token (role viewer) for a "
                        "fleet source URL; a token is never taken on the command line")


def fleet_from_args(args: argparse.Namespace) -> Any:
    """The ``FleetLookup`` the options ask for, or None."""
    from edgepkg import repo
    from edgepkg.errors import UsageError

    if args.delta_from_fleet is None:
        if args.server_token_env or args.delta_max_bases is not None:
            raise UsageError("--server-token-env and --delta-max-bases need --delta-from-fleet")
        return None
    return repo.fleet_lookup(args.delta_from_fleet, token_env=args.server_token_env)


def register_deltas(rsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = rsub.add_parser(
        "deltas",
        help="make the missing deltas to an already-published release",
        description="Build the deltas a published release lacks (skipped at publish time, or "
                    "from versions the fleet runs now), and re-sign targets, snapshot and "
                    "timestamp as publish does. Existing deltas are kept.",
    )
    p.add_argument("repo", help="repository directory")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", required=True, help="the published version to make deltas to")
    p.add_argument("--deltas", type=int, metavar="K",
                   help="also deltas from the last K releases before it (default: repository's)")
    p.add_argument("--delta-margin", type=float,
                   help="keep a delta only if at most this fraction of the full bundle")
    p.add_argument("--recipient", action="append", default=[], metavar="PUB",
                   help="recipient public key to remember first (e.g. the one a skipped delta "
                        "lacked); repeat")
    add_fleet_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_deltas)


def print_publish_result(result: Any, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
        return
    for p in result.published:
        extra = f" (delta from {p.base_version}, {p.method})" if p.kind == "delta" else ""
        print(f"published {p.target_path} {p.length} B{extra}")
    for line in result.skipped_deltas:
        print(f"no delta: {line}", file=sys.stderr)
    print(f"targets v{result.targets_version}")


def _deltas(args: argparse.Namespace) -> int:
    from edgepkg import repo

    result = repo.make_missing_deltas(
        args.repo, args.model, args.version, fleet=fleet_from_args(args), deltas=args.deltas,
        delta_max_bases=args.delta_max_bases, delta_margin=args.delta_margin,
        recipients=args.recipient,
    )
    if not args.json and not result.published and not result.skipped_deltas:
        print(f"{args.model} {args.version}: no delta missing")
    print_publish_result(result, args.json)
    return 0
