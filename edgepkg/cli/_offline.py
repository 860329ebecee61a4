"""``edgepkg export-offline``: an offline (USB) update package for devices with no network.

See :mod:`edgepkg.offline` for the layout and docs/device-integrator.md, "Offline (USB) updates".
"""

from __future__ import annotations

import argparse
import datetime as dt

from edgepkg.cli._common import print_json
from edgepkg.errors import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export-offline",
        help="write an offline update package (TUF metadata + bundles + key grants) for USB",
        description="Copy the signed TUF metadata (root chain, timestamp, snapshot, targets) "
        "and the release's bundles into a directory or a .tar archive that "
        "'edge-updater install-offline' verifies with the device's own trust chain. Named "
        "devices get key grants (needed when they are not direct recipients of the bundle).",
    )
    p.add_argument("--repo", required=True, metavar="DIR", help="the TUF repository directory")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", required=True, help="release version to install")
    p.add_argument("--device-key", action="append", default=[], metavar="PUB",
                   help="a device's P-256 public key (PEM path or pkcs11: URI); repeat, in the "
                        "same order as --device-id")
    p.add_argument("--device-id", action="append", default=[], metavar="ID",
                   help="the device id for the --device-key at the same position (default: "
                        "computed from the key)")
    p.add_argument("--key-service", metavar="REF",
                   help="key-service private key the bundles were packaged for (pkcs11: URI or "
                        "PEM path); needed with --device-key")
    p.add_argument("--expires", default="30d", metavar="WHEN",
                   help="grant lifetime such as 12h, 30d (at most 366d) or a UTC time "
                        "(default 30d)")
    p.add_argument("--deltas", action="store_true",
                   help="include the release's delta bundles too (smaller installs on devices "
                        "that run a delta's base version)")
    p.add_argument("-o", "--output", required=True, metavar="DIR|ARCHIVE.tar",
                   help="new directory, or an archive name ending in .tar")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from edgepkg.cli._grant import parse_expiry
    from edgepkg.keys import load_public_key, load_recipient_key, public_key_id
    from edgepkg.offline import export_offline

    if args.device_id and len(args.device_id) != len(args.device_key):
        raise UsageError("give one --device-id per --device-key (or none: computed from the key)")
    now = dt.datetime.now(dt.UTC)
    pubs = [load_public_key(ref) for ref in args.device_key]
    ids = args.device_id or [public_key_id(p) for p in pubs]
    result = export_offline(
        args.repo, args.model, args.version, args.output, devices=list(zip(pubs, ids,
                                                                            strict=True)),
        key_service=load_recipient_key(args.key_service) if args.key_service else None,
        include_deltas=args.deltas, expires_at=parse_expiry(args.expires, now), now=now)
    view = {"output": str(result.output), "model": result.model, "version": result.version,
            "files": result.files, "granted_devices": result.devices, "bytes": result.bytes}
    if args.json:
        print_json(view)
    else:
        print(f"exported {result.model} {result.version} ({len(result.files)} files, "
              f"{result.bytes} bytes, grants for {len(result.devices)} devices) -> "
              f"{result.output}")
    return 0
