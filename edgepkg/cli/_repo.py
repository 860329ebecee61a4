"""``edgepkg repo init|status|refresh|rotate|revoke`` and ``edgepkg publish``.

``repo refresh`` exit codes (for cron / a monitor): 0 every role is valid beyond its margin
(after any re-signing), 3 WARNING root or targets (offline keys) expire soon, 4 CRITICAL some
metadata is expired and could not be re-signed, 1 error (e.g. a signing key unreachable),
2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import Any

from edgepkg.cli._common import print_json
from edgepkg.cli._fleet import (
    add_fleet_options,
    fleet_from_args,
    print_publish_result,
    register_deltas,
)
from edgepkg.errors import UsageError

ROLES = ("root", "targets", "snapshot", "timestamp")


def _role_pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in values:
        role, sep, value = item.partition("=")
        if not sep or role not in ROLES or not value:
            raise UsageError(
                f"{what} {item!r}: expected ROLE=VALUE with ROLE one of {', '.join(ROLES)}"
            )
        pairs.append((role, value))
    return pairs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    repo = sub.add_parser("repo", help="manage the TUF release repository")
    rsub = repo.add_subparsers(dest="repo_command", metavar="COMMAND", parser_class=type(repo))
    repo.set_defaults(func=lambda args: _usage(repo))

    p = rsub.add_parser("init", help="create a repository: root, targets, snapshot, timestamp v1")
    p.add_argument("repo", help="repository directory (metadata/ and targets/ are created)")
    p.add_argument("--key", action="append", default=[], metavar="ROLE=REF", required=True,
                   help="signing key of a role: PEM path or pkcs11: URI; repeat (e.g. 2 root keys)")
    p.add_argument("--threshold", action="append", default=[], metavar="ROLE=N",
                   help="signatures a role needs (default 1)")
    p.add_argument("--expires", action="append", default=[], metavar="ROLE=DURATION",
                   help="metadata lifetime, e.g. timestamp=1d (defaults root 365d, targets 90d, "
                        "snapshot 7d, timestamp 1d)")
    p.add_argument("--release-key", action="append", default=[], metavar="PUB",
                   help="public key whose bundle signatures publish accepts; repeat")
    p.add_argument("--release-signer", metavar="REF",
                   help="release signing key publish uses to sign delta bundles (also trusted)")
    p.add_argument("--archive-key", metavar="REF",
                   help="release-archive recipient key (P-256, PEM path or pkcs11: URI): every "
                        "bundle must be encrypted to it; publish decrypts old releases with it "
                        "to make deltas")
    p.add_argument("--recipient", action="append", default=[], metavar="PUB",
                   help="recipient public key (fleet/device) deltas may be encrypted to; repeat")
    p.add_argument("--deltas", type=int, default=2, metavar="K",
                   help="deltas from the last K releases")
    p.add_argument("--delta-margin", type=float, default=0.9,
                   help="publish a delta only if it is at most this fraction of the full bundle")
    p.add_argument("--json", action="store_true", help="print {repo, keyids} as JSON")
    p.set_defaults(func=_init)

    p = rsub.add_parser("status", help="models, versions, deltas, role versions and expiries")
    p.add_argument("repo", help="repository directory")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=_status)

    p = rsub.add_parser("refresh", help="re-sign timestamp/snapshot before they expire (cron)",
                        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("repo", help="repository directory")
    p.add_argument("--role", choices=("timestamp", "snapshot"), action="append",
                   help="only this role (repeatable; default both)")
    p.add_argument("--force", action="store_true", help="re-sign even if not due")
    p.add_argument("--json", action="store_true",
                   help="print what was re-signed, warnings and expiries as JSON")
    p.set_defaults(func=_refresh)

    p = rsub.add_parser("rotate", help="change a role's keys/threshold in a new root version")
    p.add_argument("repo", help="repository directory")
    p.add_argument("role", choices=ROLES, help="the role whose keys or threshold change")
    p.add_argument("--add", action="append", default=[], metavar="REF", help="key to add; repeat")
    p.add_argument("--remove", action="append", default=[], metavar="KEYID",
                   help="key id to remove; repeat")
    p.add_argument("--threshold", type=int,
                   help="signatures the role needs from now on (default: unchanged)")
    p.add_argument("--json", action="store_true",
                   help="print {role, root_version, keyids, threshold} as JSON")
    p.set_defaults(func=_rotate)

    p = rsub.add_parser(
        "revoke", help="withdraw a release (and its deltas); it can never be re-published"
    )
    p.add_argument("repo", help="repository directory")
    p.add_argument("model", help="model name")
    p.add_argument("version", help="the release version to withdraw")
    p.add_argument("--reason", default="", help="why, recorded in the revocation list")
    p.add_argument("--json", action="store_true", help="print the revocation as JSON")
    p.set_defaults(func=_revoke)

    register_deltas(rsub)

    p = sub.add_parser("publish", help="add release bundles (and deltas) to the TUF repository")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE",
                   help="release bundle(s) made by `edgepkg package`")
    p.add_argument("--repo", required=True, help="repository directory (made by `repo init`)")
    p.add_argument("--deltas", type=int, metavar="K",
                   help="deltas from the last K releases (0: none)")
    p.add_argument("--delta-margin", type=float,
                   help="publish a delta only if at most this fraction of the full bundle")
    p.add_argument("--recipient", action="append", default=[], metavar="PUB",
                   help="recipient public key to remember (deltas are encrypted to the full "
                        "release's recipients); repeat")
    add_fleet_options(p)
    p.add_argument("--json", action="store_true",
                   help="print what was published and which deltas were skipped as JSON")
    p.set_defaults(func=_publish)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _init(args: argparse.Namespace) -> int:
    from edgepkg import repo

    keys: dict[str, list[str]] = defaultdict(list)
    for role, ref in _role_pairs(args.key, "--key"):
        keys[role].append(ref)
    thresholds: dict[str, int] = {}
    for role, value in _role_pairs(args.threshold, "--threshold"):
        if not value.isdigit():
            raise UsageError(f"--threshold {role}={value}: not a number")
        thresholds[role] = int(value)
    expires = dict(_role_pairs(args.expires, "--expires"))
    result = repo.init_repo(
        args.repo, keys, thresholds=thresholds, expires=expires, release_keys=args.release_key,
        release_signer=args.release_signer, archive_key=args.archive_key,
        recipients=args.recipient, delta_k=args.deltas, delta_margin=args.delta_margin,
    )
    if args.json:
        print_json({"repo": result.repo_dir, "keyids": result.keyids})
    else:
        print(f"initialised {result.repo_dir}")
        for role, ids in result.keyids.items():
            print(f"  {role:<9} {', '.join(i[:16] for i in ids)}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from edgepkg import repo

    st = repo.status(args.repo)
    if args.json:
        print_json(st)
        return 0
    print(f"repository {st['repo']}")
    for role, r in st["roles"].items():
        flag = " EXPIRED" if r["expired"] else (" (expires soon)" if r["warning"] else "")
        print(f"  {role:<9} v{r['version']:<4} expires {r['expires']}  "
              f"threshold {r['threshold']}/{len(r['keyids'])}{flag}")
    if not st["models"]:
        print("no releases")
    for name, versions in sorted(st["models"].items()):
        print(f"model {name}")
        for version, entry in versions.items():
            full = entry["full"]
            size = f"{full['length']} B" if full else "no full bundle"
            deltas = ", ".join(f"from {d['base_version']} {d['length']} B ({d['method']})"
                               for d in entry["deltas"])
            print(f"  {version:<12} {size}" + (f"; deltas: {deltas}" if deltas else ""))
    for entry in st["revoked"]:
        print(f"revoked {entry.get('name')} {entry.get('version')} at {entry.get('revoked_at')} "
              f"{entry.get('reason') or ''}".rstrip())
    for warning in st["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from edgepkg import repo

    roles = tuple(args.role) if args.role else ("snapshot", "timestamp")
    result = repo.refresh(args.repo, roles=roles, force=args.force)
    if args.json:
        print_json(result.to_dict())
    else:
        print("re-signed: " + (", ".join(result.resigned) or "nothing (not due)"))
        for line in result.expired:
            print(f"CRITICAL: {line}", file=sys.stderr)
        for line in result.warnings:
            print(f"WARNING: {line}", file=sys.stderr)
    return result.exit_code


def _rotate(args: argparse.Namespace) -> int:
    from edgepkg import repo

    result = repo.rotate(args.repo, args.role, add=args.add, remove=args.remove,
                         threshold=args.threshold)
    out: dict[str, Any] = {"role": result.role, "root_version": result.root_version,
                           "keyids": result.keyids, "threshold": result.threshold}
    if args.json:
        print_json(out)
    else:
        print(f"root v{result.root_version}: {result.role} keys "
              f"{', '.join(k[:16] for k in result.keyids)} threshold {result.threshold}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from edgepkg import repo

    result = repo.revoke(args.repo, args.model, args.version, reason=args.reason)
    if args.json:
        print_json(vars(result))
    else:
        print(f"revoked {result.name} {result.version}; removed {len(result.removed_targets)} "
              f"target(s); targets v{result.targets_version}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from edgepkg import repo

    result = repo.publish(args.repo, args.bundles, deltas=args.deltas,
                          delta_margin=args.delta_margin, recipients=args.recipient,
                          fleet=fleet_from_args(args), delta_max_bases=args.delta_max_bases)
    print_publish_result(result, args.json)
    return 0
