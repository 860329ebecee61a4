"""PKCS#11 keys (python-pkcs11): signers, recipient keys, key generation and data objects.

Private keys are generated inside the token with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false and
are only ever *used* there: ECDSA signing (CKM_ECDSA over a SHA-256 digest computed here) and
ECDH (CKM_ECDH1_DERIVE into a short-lived session secret whose value is the shared secret).

This module is the adapter's one entry point; the work is split by responsibility:

- ``_pkcs11_session``: loading the library, finding tokens, cached logged-in sessions, retry
  after a fork or a closed session;
- ``_pkcs11_objects``: finding key objects and opening a private key for use;
- ``_pkcs11_keys``: the signer, the HPKE recipient key, public keys and key generation;
- ``_pkcs11_data``: labelled data objects (write-once, unique labels).
"""

from __future__ import annotations

from edgepkg.keys._pkcs11_data import (
    DATA_APPLICATION,
    MAX_DATA_OBJECT,
    DataObjectConflictError,
    DataObjectExistsError,
    DataObjectMissingError,
    create_data_object_once,
    delete_data_object,
    read_data_object,
    read_unique_data_object,
    store_data_object,
)
from edgepkg.keys._pkcs11_keys import (
    Pkcs11RecipientKey,
    Pkcs11Signer,
    generate_keypair,
    has_private_key,
    load_token_public_key,
)
from edgepkg.keys._pkcs11_session import P256_PARAMS, module_for, pkcs11_lib

__all__ = [
    "DATA_APPLICATION",
    "MAX_DATA_OBJECT",
    "P256_PARAMS",
    "DataObjectConflictError",
    "DataObjectExistsError",
    "DataObjectMissingError",
    "Pkcs11RecipientKey",
    "Pkcs11Signer",
    "create_data_object_once",
    "delete_data_object",
    "generate_keypair",
    "has_private_key",
    "load_token_public_key",
    "module_for",
    "pkcs11_lib",
    "read_data_object",
    "read_unique_data_object",
    "store_data_object",
]
