"""Signed, encrypted, streaming model bundles (see docs and ../shared/DESIGN.md §2).

Public API::

    package_model(model, out, name=, version=, signer=, recipients=, ...) -> Manifest
    write_bundle(payload, out, manifest_fields=, signer=, recipients=) -> Manifest
    read_bundle_info(path) -> BundleInfo           # no key, nothing verified, header only
    check_bundle(path) -> BundleInfo               # no key: the whole file is intact (format 2)
    verify_bundle(path, trusted_keys) -> BundleInfo  # + both release-key signatures
    open_plaintext(path, keys=, trusted_keys=) -> Iterator[bytes]
    unpack_bundle(path, out, keys=, trusted_keys=) -> Manifest

Readers take the data key from recipient ``keys`` or from ``data_key_source`` (a
:data:`DataKeySource`, e.g. :func:`edgepkg.grants.grant_key_source` for a key grant).
"""

from edgepkg.bundle._io import BundleInfo, write_bundle
from edgepkg.bundle._manifest import Manifest, check_name, normalize_policy, parse_version
from edgepkg.bundle._package import package_model
from edgepkg.bundle._read import (
    BundleReader,
    DataKeySource,
    check_bundle,
    open_plaintext,
    read_bundle_info,
    unpack_bundle,
    verify_bundle,
    verify_signed_manifest,
)

__all__ = [
    "BundleInfo",
    "BundleReader",
    "DataKeySource",
    "Manifest",
    "check_bundle",
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
