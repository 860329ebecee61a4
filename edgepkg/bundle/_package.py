"""``package_model``: detect the format, then write a signed, encrypted bundle."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from edgepkg.bundle._io import Progress, write_bundle
from edgepkg.bundle._manifest import Manifest, check_name, normalize_policy, parse_version
from edgepkg.keys._types import Signer


def package_model(
    model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    signer: Signer,
    recipients: Sequence[Any],
    format: str = "auto",
    requirements: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Package one model file. The format is detected from its bytes (or forced, and checked).

    ``requirements`` are operator-given facts the file cannot tell (e.g. ``gpu_sm=87``); they are
    merged over what detection found. A TFLite Micro C array is packaged as its flatbuffer bytes.
    """
    from edgepkg.formats import detect, prepare_payload  # release side only; devices skip it

    check_name(name)
    parse_version(version)
    info = detect(model_path, format=format, extra_requirements=dict(requirements or {}))
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "format": info.format,
        "requirements": dict(info.requirements),
        "details": dict(info.details),
        "policy": normalize_policy(policy),
    }
    with tempfile.TemporaryDirectory(prefix="edgepkg-") as workdir:
        payload = prepare_payload(model_path, info, workdir)
        return write_bundle(
            payload,
            out_path,
            manifest_fields=fields,
            signer=signer,
            recipients=recipients,
            progress=progress,
        )
