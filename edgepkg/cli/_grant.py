"""``edgepkg grant``: re-wrap a bundle's data key to one device key (offline / air-gapped use).

The update server makes grants on assignment; this command does the same from a shell, e.g. to
carry a grant to a device by hand. See :mod:`edgepkg.grants` and docs/security.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re

from edgepkg.cli._common import print_json
from edgepkg.errors import UsageError

_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "grant",
        help="give one device the data key of a bundle (a key grant; the bundle is unchanged)",
        description="Unwrap the bundle's data key with the key-service key (in its token) and "
        "re-wrap it to the device key, bound to the device id, the release and an expiry. "
        "The model is never decrypted.",
    )
    p.add_argument("--bundle", required=True, help="the bundle (.edgepkg) to grant access to")
    p.add_argument("--key-service", required=True, metavar="REF",
                   help="key-service private key the bundle was packaged for: pkcs11: URI "
                        "(production) or PEM path")
    p.add_argument("--device-key", required=True, metavar="PUB",
                   help="the device's P-256 public key (PEM path or pkcs11: URI)")
    p.add_argument("--device-id", metavar="ID",
                   help="device id (the device key's id; default: computed from --device-key)")
    p.add_argument("--expires", default="7d", metavar="WHEN",
                   help="lifetime such as 30m, 12h, 7d (at most 366d) or a UTC time "
                        "2025-01-31T12:00:00Z (default 7d)")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="release public key: verify the whole bundle first; repeat")
    p.add_argument("-o", "--output", required=True, help="grant file to write (JSON)")
    p.add_argument("--json", action="store_true", help="print a summary of the grant as JSON")
    p.set_defaults(func=_grant)


def parse_expiry(text: str, now: dt.datetime) -> dt.datetime:
    """``7d``-style durations from ``now``, or an absolute UTC time."""
    m = _DURATION.match(text.strip())
    if m:
        return now + dt.timedelta(seconds=int(m[1]) * _UNIT_S[m[2]])
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--expires {text!r}: give a duration (30m, 12h, 7d) or a UTC time "
            "(2025-01-31T12:00:00Z)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _grant(args: argparse.Namespace) -> int:
    from edgepkg._atomic import atomic_write_bytes
    from edgepkg.grants import make_grant
    from edgepkg.keys import load_public_key, load_recipient_key, public_key_id

    now = dt.datetime.now(dt.UTC)
    expires = parse_expiry(args.expires, now)
    device_pub = load_public_key(args.device_key)
    device_id = args.device_id or public_key_id(device_pub)
    trusted = [load_public_key(ref) for ref in args.trusted_key] or None
    grant = make_grant(args.bundle, load_recipient_key(args.key_service), device_pub, device_id,
                       expires, now, trusted_keys=trusted)
    atomic_write_bytes(args.output, grant.to_json() + b"\n", mode=0o644)
    view = {"output": args.output, "device_id": grant.device_id, "model": grant.model,
            "version": grant.model_version, "release_sha256": grant.release_sha256,
            "expires_at": grant.bound_fields()["expires_at"], "key_service": grant.key_service}
    if args.json:
        print_json(view)
    else:
        print(f"granted {grant.model} {grant.model_version} to device {grant.device_id[:16]}… "
              f"until {view['expires_at']} -> {args.output}")
    return 0
