"""Keys: references, signers, recipient keys, key creation and token data objects.

A key reference is a PEM file path (development), PEM bytes, or an RFC 7512 ``pkcs11:`` URI
(production: the private key lives in a token and never leaves it)::

    signer = load_signer("pkcs11:token=release;object=release-2025;type=private?pin-source=env:PIN")
    signature = signer.sign(manifest_bytes)
    verify_signature(load_public_key("keys/dev/release.pub.pem"), signature, manifest_bytes)

Key ids are the hex SHA-256 of the DER SubjectPublicKeyInfo (:func:`public_key_id`).
"""

from __future__ import annotations

from edgepkg.crypto import public_key_id, verify_signature
from edgepkg.keys._api import (
    DEFAULT_KEY_DIR,
    CreatedKey,
    KeyKind,
    KeyRef,
    create_data_object_once,
    create_key,
    delete_data_object,
    generate_token_keypair,
    key_uri,
    load_public_key,
    load_recipient_key,
    load_signer,
    read_data_object,
    read_unique_data_object,
    store_data_object,
)
from edgepkg.keys._pkcs11 import (
    DataObjectConflictError,
    DataObjectExistsError,
    DataObjectMissingError,
)
from edgepkg.keys._software import (
    FileRecipientKey,
    FileSigner,
    algorithm_of,
    public_key_pem,
)
from edgepkg.keys._types import PublicKey, RecipientKey, Signer, SigningAlgorithm
from edgepkg.keys._uri import (
    MODULE_ENV,
    PIN_ENV,
    Pkcs11Uri,
    Pkcs11UriError,
    is_pkcs11_uri,
    parse_pkcs11_uri,
)

__all__ = [
    "DEFAULT_KEY_DIR",
    "MODULE_ENV",
    "PIN_ENV",
    "CreatedKey",
    "DataObjectConflictError",
    "DataObjectExistsError",
    "DataObjectMissingError",
    "FileRecipientKey",
    "FileSigner",
    "KeyKind",
    "KeyRef",
    "Pkcs11Uri",
    "Pkcs11UriError",
    "PublicKey",
    "RecipientKey",
    "Signer",
    "SigningAlgorithm",
    "algorithm_of",
    "create_data_object_once",
    "create_key",
    "delete_data_object",
    "generate_token_keypair",
    "is_pkcs11_uri",
    "key_uri",
    "load_public_key",
    "load_recipient_key",
    "load_signer",
    "parse_pkcs11_uri",
    "public_key_id",
    "public_key_pem",
    "read_data_object",
    "read_unique_data_object",
    "store_data_object",
    "verify_signature",
]
