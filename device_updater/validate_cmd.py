"""``edge-updater validate``: the device's quality gate as a release-pipeline check.

    edge-updater validate --candidate MODEL_OR_BUNDLE --running MODEL_OR_BUNDLE \\
        --holdout DIR --policy POLICY.toml [--key REF] [--trusted-key PUB] [--json] [--timeout S]

Runs exactly :func:`device_updater.validation.gate.run_gate`, the code the daemon runs before a
switch. Exit 0: accepted; 1: rejected (every rule's outcome printed, failures first); 2: usage or
setup error (bad arguments, unreadable holdout or policy, runtime missing, a bundle that cannot
be verified or decrypted, a running model that cannot itself be measured). Needs no device
config. Kept apart from ``cli.py`` so the other commands do not import numpy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

EXIT_ACCEPT, EXIT_REJECT, EXIT_USAGE = 0, 1, 2
_EXT_FORMATS = {".onnx": "onnx", ".tflite": "tflite"}
_FORMATS = ("auto", "onnx", "tflite", "tflm", "edgetpu", "tensorrt")


class SetupError(Exception):
    """Something about the invocation or environment, not the candidate: exit 2."""


def register(sub: Any) -> None:
    v = sub.add_parser(
        "validate", help="judge a candidate model against the running one (release check)",
        description="Run the device's validation gate: exit 0 accept, 1 reject, 2 usage or "
                    "setup error. See docs/validation.md.")
    v.add_argument("--candidate", required=True, metavar="MODEL_OR_BUNDLE",
                   help="the new model: a model file or an edgepkg bundle")
    v.add_argument("--running", required=True, metavar="MODEL_OR_BUNDLE",
                   help="the model the device runs now ('none' for a first install)")
    v.add_argument("--holdout", required=True, metavar="DIR",
                   help="holdout directory (inputs.npy|inputs.npz, labels.npy|boxes.npy, "
                        "optional slices.npz) or an .npz")
    v.add_argument("--policy", metavar="POLICY.toml",
                   help="validation policy; default: the candidate bundle's signed policy")
    v.add_argument("--key", action="append", default=[], metavar="REF",
                   help="recipient private key (PEM or pkcs11: URI) to open bundles; repeat")
    v.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="release public key a bundle's signature must verify against; repeat")
    v.add_argument("--candidate-format", choices=_FORMATS, default="auto",
                   help="the candidate's format (default: detected from the file)")
    v.add_argument("--running-format", choices=_FORMATS, default="auto",
                   help="the running model's format (default: detected from the file)")
    v.add_argument("--json", action="store_true", help="print the verdict as JSON")
    v.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="time limit per runner process (default 120)")
    v.add_argument("--latency-budget", type=float, default=3.0, metavar="S",
                   help="time for the interleaved latency measurement (default 3)")
    v.set_defaults(func=None, standalone=run)


def _is_bundle(path: Path) -> bool:
    from edgepkg.bundle import read_bundle_info
    from edgepkg.errors import BundleError

    try:
        read_bundle_info(path)
    except (BundleError, OSError):
        return False
    return True


def _open_model(path: Path, fmt: str, args: argparse.Namespace, work: Path,
                what: str) -> tuple[Path, str, dict[str, Any] | None]:
    """(plaintext model path, format, signed policy or None) for a model file or bundle."""
    if not path.is_file():
        raise SetupError(f"{what} {path} is not a file")
    if _is_bundle(path):
        from edgepkg.bundle import unpack_bundle
        from edgepkg.keys import load_public_key, load_recipient_key

        if not args.key or not args.trusted_key:
            raise SetupError(f"{what} {path} is a bundle: pass --key (a recipient key) and "
                             "--trusted-key (the release public key) to open it")
        out = work / f"{what}.model"
        manifest = unpack_bundle(path, out, keys=[load_recipient_key(k) for k in args.key],
                                 trusted_keys=[load_public_key(k) for k in args.trusted_key])
        chosen = manifest.format if fmt == "auto" else fmt
        return out, chosen, manifest.policy
    if fmt == "auto":
        fmt = _EXT_FORMATS.get(path.suffix.lower(), "")
        if not fmt:
            from edgepkg.formats import detect

            fmt = detect(path).format
    return path, fmt, None


def _load_policy(args: argparse.Namespace, signed: dict[str, Any] | None) -> Any:
    import tomllib

    from device_updater.validation import parse_device_policy

    if args.policy:
        try:
            with open(args.policy, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise SetupError(f"cannot read policy {args.policy}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SetupError(f"policy {args.policy} is not valid TOML: {exc}") from None
    elif signed is not None:
        data = signed
    else:
        raise SetupError("pass --policy POLICY.toml (the candidate is not a bundle with a "
                         "signed policy)")
    return parse_device_policy(data)


def _validate(args: argparse.Namespace) -> tuple[int, dict[str, Any], list[str]]:
    from device_updater.errors import (
        HoldoutError,
        PolicyError,
        RuntimeNotInstalledError,
        ValidationError,
    )
    from device_updater.validation import load_holdout, run_gate
    from edgepkg.errors import Error as EdgepkgError

    with tempfile.TemporaryDirectory(prefix="edge-validate-") as tmp:
        work = Path(tmp)
        try:
            cand, cand_fmt, signed = _open_model(Path(args.candidate), args.candidate_format,
                                                 args, work, "candidate")
            running = None
            run_fmt = None
            if args.running.lower() != "none":
                running, run_fmt, _ = _open_model(Path(args.running), args.running_format,
                                                  args, work, "running")
            policy = _load_policy(args, signed)
            holdout = load_holdout(Path(args.holdout), task=policy.task)
            result = run_gate(cand, cand_fmt, running, run_fmt, holdout, policy,
                              timeout=args.timeout, latency_budget_s=args.latency_budget,
                              workdir=work)
        except (HoldoutError, PolicyError, RuntimeNotInstalledError) as exc:
            raise SetupError(str(exc)) from None
        except ValidationError as exc:  # the running model or the setup failed, not the gate
            raise SetupError(str(exc)) from None
        except EdgepkgError as exc:  # bundle/key errors: the invocation cannot be honoured
            raise SetupError(str(exc)) from None
    doc = result.to_dict()
    return (EXIT_ACCEPT if result.accepted else EXIT_REJECT), doc, result.verdict.reasons


def run(args: argparse.Namespace) -> int:
    """Entry from ``edge-updater``'s ``main`` (no config needed)."""
    try:
        code, doc, reasons = _validate(args)
    except SetupError as exc:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"edge-updater validate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    else:
        print("ACCEPT" if code == EXIT_ACCEPT else "REJECT")
        for line in reasons:
            print(f"  {line}")
    return code
