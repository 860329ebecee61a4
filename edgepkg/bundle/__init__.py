"""Signed, encrypted, streaming model bundles (see docs and ../shared/DESIGN.md §2).

Public API::

    package_model(model, out, name=, version=, signer=, recipients=, ...) -> Manifest
    write_bundle(payload, out, manifest_fields=, signer=, recipients=) -> Manifest
    read_bundle_info(path) -> BundleInfo           # no key, nothing verified
    verify_bundle(path, trusted_keys) -> BundleInfo
    open_plaintext(path, keys=, trusted_keys=) -> Iterator[bytes]
    unpack_bundle(path, out, keys=, trusted_keys=) -> Manifest
"""

from edgepkg.bundle._io import (
    BundleInfo,
    BundleReader,
    open_plaintext,
    read_bundle_info,
    unpack_bundle,
    verify_bundle,
    verify_signed_manifest,
    write_bundle,
)
from edgepkg.bundle._manifest import Manifest, check_name, normalize_policy, parse_version
from edgepkg.bundle._package import package_model

__all__ = [
    "BundleInfo",
    "BundleReader",
    "Manifest",
    "check_name",
    "normalize_policy",
    "open_plaintext",
    "package_model",
    "parse_version",
    "read_bundle_info",
    "unpack_bundle",
    "verify_bundle",
    "verify_signed_manifest",
    "write_bundle",
]
