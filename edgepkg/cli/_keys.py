"""``edgepkg keys create | show``: make development or token keys, show a key's public half."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgepkg.cli._common import print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "keys",
        help="create and inspect keys (PEM files for development, PKCS#11 tokens for production)",
        description="Create and inspect keys. A key reference is a PEM file path or an RFC 7512 "
        "pkcs11: URI (PIN from ?pin-source=FILE|env:VAR, ?pin-value= or $EDGEPKG_PKCS11_PIN).",
    )
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys.set_defaults(func=lambda args: _usage(keys))

    p = ksub.add_parser(
        "create",
        help="create a key pair",
        description="Create a key pair. Without --pkcs11, writes NAME.key.pem (0600, development "
        "only) and NAME.pub.pem under --dir. With --pkcs11 URI, generates the pair inside the "
        "token (private half sensitive and non-extractable; label NAME unless the URI has "
        "object=) and writes only NAME.pub.pem.",
    )
    p.add_argument("name", help="key name: file stem and token label (letters, digits, . _ -)")
    p.add_argument(
        "--kind",
        required=True,
        choices=("signing", "recipient"),
        help="signing: release/TUF key; recipient: fleet or device P-256 key",
    )
    p.add_argument(
        "--algorithm",
        choices=("ed25519", "ecdsa-p256"),
        help="default: ed25519 for file signing keys, ecdsa-p256 otherwise",
    )
    p.add_argument("--dir", default="keys/dev", help="where to write the PEM files (keys/dev)")
    p.add_argument("--pkcs11", metavar="URI", help="generate inside this PKCS#11 token")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_create)

    p = ksub.add_parser(
        "show",
        help="show a key's public PEM, key id, algorithm and where it lives",
        description="Show a key: REF is a PEM file (public or private) or a pkcs11: URI.",
    )
    p.add_argument("ref", help="PEM path or pkcs11: URI")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_show)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _create(args: argparse.Namespace) -> int:
    from edgepkg.keys import create_key

    created = create_key(
        args.name,
        args.kind,
        directory=args.dir,
        algorithm=args.algorithm,
        pkcs11_uri=args.pkcs11,
    )
    # A file key was already warned about, once, by edgepkg.keys (logged as
    # "edgepkg: warning: ..."): no second warning here.
    if args.json:
        print_json(created.to_json())
        return 0
    print(f"created {created.kind} key {created.name} ({created.algorithm})")
    print(f"  key id:      {created.key_id}")
    print(f"  public key:  {created.public_path}")
    print(f"  private key: {created.private_ref}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from edgepkg.keys import algorithm_of, is_pkcs11_uri, public_key_id, public_key_pem
    from edgepkg.keys._api import describe_key

    info: dict[str, Any] = describe_key(args.ref)
    pub = info.pop("_public_key")
    info.update(
        key_id=public_key_id(pub),
        algorithm=algorithm_of(pub),
        public_key_pem=public_key_pem(pub).decode("ascii"),
        location="pkcs11" if is_pkcs11_uri(args.ref) else "file",
    )
    if args.json:
        print_json(info)
        return 0
    print(f"key id:     {info['key_id']}")
    print(f"algorithm:  {info['algorithm']}")
    print(f"lives in:   {info['where']}")
    has = info["has_private"]
    print(f"private:    {'unknown (no PIN)' if has is None else 'yes' if has else 'no'}")
    sys.stdout.write(info["public_key_pem"])
    return 0
