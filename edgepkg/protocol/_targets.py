"""TUF target names of releases and deltas: the release side writes them, the device and the
server look them up, so the naming lives in one place."""

from __future__ import annotations

import re

from edgepkg.errors import ProtocolError

# Model names and versions become path components of target names: keep them boring.
TARGET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TARGET_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,63}$")


def check_target_model(name: str) -> str:
    if not isinstance(name, str) or not TARGET_NAME_RE.match(name) or ".." in name:
        raise ProtocolError(
            f"model name {name!r} is not allowed (letters, digits, '.', '_', '-')", field="model"
        )
    return name


def check_target_version(version: str) -> str:
    if not isinstance(version, str) or not TARGET_VERSION_RE.match(version) or ".." in version:
        raise ProtocolError(f"version {version!r} is not allowed in a target name", field="version")
    return version


def full_target_name(model: str, version: str) -> str:
    """``models/<model>/<version>/<model>-<version>.edgepkg``"""
    return f"models/{model}/{version}/{model}-{version}.edgepkg"


def delta_target_name(model: str, version: str, base_version: str) -> str:
    """``models/<model>/<version>/delta-from-<base_version>.edgepkg``"""
    return f"models/{model}/{version}/delta-from-{base_version}.edgepkg"


def release_dir(model: str, version: str) -> str:
    """The directory prefix every target of one release shares."""
    return f"models/{model}/{version}/"
