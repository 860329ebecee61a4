"""``edgepkg package | inspect | verify | unpack``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from edgepkg.cli._common import Progress, print_json
from edgepkg.errors import UsageError

FORMAT_CHOICES = ("auto", "tensorrt", "edgetpu", "tflm", "tflite", "onnx", "raw")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("package", help="detect, sign, encrypt and compress a model into a bundle")
    p.add_argument("model", help="model file (TensorRT engine, .tflite, TFLM C array, .onnx, ...)")
    p.add_argument("--name", required=True, help="model name (a-z, 0-9, '.', '_', '-')")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    p.add_argument("--sign-key", required=True, metavar="REF",
                   help="release signing key: PEM path or pkcs11: URI")
    p.add_argument("--recipient", action="append", default=[], metavar="PUB",
                   help="recipient public key (fleet or device; P-256 PEM or pkcs11: URI); repeat")
    p.add_argument("--key-service", action="append", default=[], metavar="PUB",
                   help="key-service public key: devices enrolled later get the data key through "
                        "a key grant (edgepkg grant); repeat. Give this or --recipient")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                   help="model format (default auto: detected from the file; raw: opaque bytes)")
    p.add_argument("--require", action="append", default=[], metavar="KEY=VALUE",
                   help="requirement the file cannot tell, e.g. gpu_sm=87; repeat")
    p.add_argument("--policy", metavar="FILE.toml",
                   help="validation policy (keys in docs/validation.md); the --policy-* flags "
                        "below override its top-level keys")
    p.add_argument("--policy-metric", help="validation metric, e.g. top1_accuracy")
    p.add_argument("--policy-min", type=float, help="minimum metric on the device's holdout set")
    p.add_argument("--policy-max-regression", type=float,
                   help="largest allowed drop of the metric vs the running model")
    p.add_argument("--policy-max-latency-ratio", type=float,
                   help="largest allowed p95 latency ratio vs the running model")
    p.add_argument("-o", "--output", required=True, help="bundle file to write")
    p.add_argument("--check-load", action="store_true",
                   help="first load the model with its runtime (onnxruntime, LiteRT, TFLM)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_package)

    p = sub.add_parser("inspect", help="show a bundle's manifest, signer and recipients (no key)")
    p.add_argument("bundle", help="bundle file (.edgepkg); its signature is NOT checked")
    p.add_argument("--json", action="store_true", help="print the manifest view as JSON")
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "verify", help="check that a bundle is whole and (with --trusted-key) signed (exit 0/1)",
        description="Without keys: check that every byte of the file matches the digests it "
        "commits to (truncation, corruption). With --trusted-key: also check that a trusted "
        "release key signed the manifest and those digests.")
    p.add_argument("bundle", help="bundle file (.edgepkg)")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="trusted release public key (PEM path or pkcs11: URI); repeat")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_verify)

    p = sub.add_parser("unpack", help="verify, decrypt and decompress a bundle to a model file")
    p.add_argument("bundle", help="bundle file (.edgepkg) to decrypt")
    p.add_argument("--key", action="append", required=True, metavar="REF",
                   help="recipient private key (with --grant: the device key): PEM path or "
                        "pkcs11: URI; repeat")
    p.add_argument("--grant", metavar="FILE",
                   help="key grant (edgepkg grant) that gives --key the data key")
    p.add_argument("--device-id", metavar="ID",
                   help="with --grant: this device's id (default: the id of --key)")
    p.add_argument("--trusted-key", action="append", required=True, metavar="PUB",
                   help="release signing public key the bundle must be signed by; repeat")
    p.add_argument("-o", "--output", required=True,
                   help="model file to write (replaced atomically, only once fully verified)")
    p.add_argument("--json", action="store_true",
                   help="print {output, name, version, sha256, length} as JSON")
    p.set_defaults(func=_unpack)


def _parse_requirements(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--require expects KEY=VALUE, got {item!r}")
        value = value.strip()
        out[key.strip()] = int(value) if value.isdigit() else value
    return out


def _read_policy_file(path: str) -> dict[str, Any]:
    """The policy TOML (schema: :mod:`edgepkg.policy`); checked again when packaging."""
    import tomllib

    from edgepkg.policy import PolicySchemaError, parse_policy

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"policy file {path} is not valid TOML: {exc}") from None
    try:
        parse_policy(data)
    except PolicySchemaError as exc:
        raise UsageError(f"policy file {path}: {exc}") from None
    return data


def _package(args: argparse.Namespace) -> int:
    from edgepkg.bundle import check_name, package_model, parse_version
    from edgepkg.keys import load_public_key, load_signer

    check_name(args.name)  # usage errors (exit 2) before touching keys
    parse_version(args.version)
    if not args.recipient and not args.key_service:
        raise UsageError("give at least one --recipient or --key-service public key")
    if args.check_load:  # refuse a model its runtime cannot load, before any key is used
        from edgepkg.formats.loadcheck import check_load
        check_load(args.model, format=args.format, requirements=_parse_requirements(args.require))
    signer = load_signer(args.sign_key)
    # A key-service key is a recipient like any other; the name says what it is for.
    recipients = [load_public_key(ref) for ref in [*args.recipient, *args.key_service]]
    policy = _read_policy_file(args.policy) if args.policy else {}
    policy |= {
        k: v
        for k, v in {
            "metric": args.policy_metric,
            "min": args.policy_min,
            "max_regression": args.policy_max_regression,
            "max_latency_ratio": args.policy_max_latency_ratio,
        }.items()
        if v is not None
    }
    progress = Progress("packaging", os.path.getsize(args.model))
    try:
        manifest = package_model(
            args.model,
            args.output,
            name=args.name,
            version=args.version,
            signer=signer,
            recipients=recipients,
            format=args.format,
            requirements=_parse_requirements(args.require),
            policy=policy or None,
            progress=progress,
        )
    finally:
        progress.close()
    if args.json:
        print_json(_manifest_view(manifest))
    else:
        print(f"packaged {manifest.name} {manifest.version} ({manifest.format}, "
              f"{manifest.plaintext_length} bytes, sha256 {manifest.plaintext_sha256[:16]}…) "
              f"-> {args.output}")
    return 0


def _manifest_view(manifest: Any) -> dict[str, Any]:
    import json

    view: dict[str, Any] = json.loads(manifest.to_json())
    return view


def _inspect(args: argparse.Namespace) -> int:
    from edgepkg.bundle import read_bundle_info

    info = read_bundle_info(args.bundle)
    view = {
        "manifest": _manifest_view(info.manifest),
        "signer_key_id": info.signer_key_id,
        "signature_algorithm": info.signature_algorithm,
        "recipient_key_ids": info.recipient_key_ids,
        "format_version": info.format_version,
        "bundle_bytes": info.size,
        "verified": False,
    }
    if args.json:
        print_json(view)
        return 0
    m = info.manifest
    print(f"bundle      {args.bundle} ({info.size} bytes, format v{info.format_version}, "
          "signature NOT checked: use `edgepkg verify`)")
    print(f"model       {m.name} {m.version} ({m.format})")
    print(f"plaintext   {m.plaintext_length} bytes, sha256 {m.plaintext_sha256}")
    if m.delta:
        print(f"delta       from {m.delta['base_version']} ({m.delta['method']}), "
              f"rebuilds sha256 {m.delta['target_sha256']}")
    for key, value in sorted(m.requirements.items()):
        print(f"requires    {key} = {value}")
    if m.policy:
        print("policy      " + ", ".join(f"{k}={v}" for k, v in sorted(m.policy.items())))
    print(f"signer      {info.signer_key_id} ({info.signature_algorithm})")
    for kid in info.recipient_key_ids:
        print(f"recipient   {kid}")
    print(f"created     {m.created_at}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edgepkg.bundle import check_bundle, verify_bundle
    from edgepkg.keys import load_public_key

    trusted = [load_public_key(ref) for ref in args.trusted_key]
    info = verify_bundle(args.bundle, trusted) if trusted else check_bundle(args.bundle)
    if args.json:
        print_json({"verified": True, "intact": True, "signature_checked": bool(trusted),
                    "signer_key_id": info.signer_key_id, "name": info.manifest.name,
                    "version": info.manifest.version, "bundle_bytes": info.size,
                    "payload_sha256": info.payload_sha256})
    elif trusted:
        print(f"OK: {info.manifest.name} {info.manifest.version} signed by {info.signer_key_id}"
              f", whole file intact ({info.size} bytes)")
    else:
        print(f"OK: {info.manifest.name} {info.manifest.version}: whole file intact "
              f"({info.size} bytes); signatures NOT checked (give --trusted-key)")
    return 0


def _unpack(args: argparse.Namespace) -> int:
    from edgepkg.bundle import read_bundle_info, unpack_bundle
    from edgepkg.keys import load_public_key, load_recipient_key

    keys = [load_recipient_key(ref) for ref in args.key]
    trusted = [load_public_key(ref) for ref in args.trusted_key]
    source = _grant_source(args, keys)
    progress = Progress("unpacking", read_bundle_info(args.bundle).manifest.plaintext_length)
    try:
        manifest = unpack_bundle(args.bundle, args.output, keys=[] if source else keys,
                                 trusted_keys=trusted, progress=progress, data_key_source=source)
    finally:
        progress.close()
    if args.json:
        print_json({"output": args.output, "name": manifest.name, "version": manifest.version,
                    "sha256": manifest.plaintext_sha256, "length": manifest.plaintext_length})
    else:
        print(f"unpacked {manifest.name} {manifest.version} -> {args.output} "
              f"(sha256 {manifest.plaintext_sha256[:16]}… verified)")
    return 0


def _grant_source(args: argparse.Namespace, keys: list[Any]) -> Any:
    """The data-key source for ``unpack --grant`` (None without --grant)."""
    if args.grant is None:
        if args.device_id:
            raise UsageError("--device-id only goes with --grant")
        return None
    import datetime as dt
    from pathlib import Path

    from edgepkg.grants import KeyGrant, grant_key_source

    if len(keys) != 1:
        raise UsageError("with --grant give exactly one --key: the device key")
    grant = KeyGrant.from_json(Path(args.grant).read_bytes())
    return grant_key_source(grant, keys[0], device_id=args.device_id or keys[0].key_id,
                            now=dt.datetime.now(dt.UTC))
