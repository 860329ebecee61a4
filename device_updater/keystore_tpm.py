"""The TPM 2.0 keystore: device key and trust anchors in a TPM (hardware, firmware or swtpm).

Same interface, errors and behaviour as :class:`~device_updater.keystore.Pkcs11Keystore`;
selected by ``[keystore] type = "tpm"`` with a TCTI string (``device:/dev/tpmrm0``,
``swtpm:host=127.0.0.1,port=2321``, ``tabrmd:``). Mechanisms, all through the TSS
(:mod:`device_updater._tpm`, tpm2-pytss), because tpm2-pkcs11 1.9.0 has no ECDH derive:

* **device key**: P-256, generated inside the TPM under the owner hierarchy (fixedTPM,
  fixedParent, sensitiveDataOrigin), made a **persistent handle** (default ``0x81000E01``) with
  TPM2_EvictControl. Why persistent rather than a saved context or a key blob on disk: it
  survives reboots, TPM resets and a wiped state directory without any file, and removing it
  takes owner authorisation. (A saved context of a transient object dies at the next TPM Reset.)
* **signatures**: TPM2_Sign, ECDSA over SHA-256(data) computed here, returned DER-encoded and
  checked against the public key before they leave (a faulty TPM must not hand out bad ones).
* **ECDH**: TPM2_ECDH_ZGen with the sender's ephemeral point; the rest of the HPKE receiver
  (DHKEM key schedule, AES-GCM open) runs in software in :mod:`edgepkg.crypto` exactly as for a
  PKCS#11 key (:class:`TpmRecipientKey` is an ``edgepkg.keys.RecipientKey``).
* **trust anchors**: the SHA-256 of the anchors document lives in an owner NV index (default
  ``0x01000E16``) defined with TPMA_NV_WRITEDEFINE and write-locked right after the one write, so
  nobody can rewrite it, and undefining it takes the owner hierarchy. The document itself (up to
  16 PEM release keys, more than many TPMs' 768-2048-byte NV index limit) is kept as
  ``anchors.json`` in ``keystore.dir`` and checked against the NV digest at every read: a changed
  file is tampering (:class:`AnchorsTamperedError`), a lost one is restored by enrolling again
  with the same anchors. Unlike a PKCS#11 data object, there is no second object to add: the
  anchors are at one NV index, which only the owner can undefine and redefine.

* **slots bound to the measured state** (``pcr_binding``, on by default): slots also need a
  slot key sealed to PCR values (:mod:`device_updater.pcr_binding`), made at provisioning with
  the device key; ``edge-updater reseal`` binds it to new values after an OS update.

Owner authorisation (needed to create the key, the NV index and the sealed slot key, and to
re-seal; never by the daemon) comes from ``$EDGE_UPDATER_TPM_OWNER_AUTH`` or the constructor;
keep it off the device after provisioning.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from device_updater import _tpm, _tpm_policy
from device_updater.config import Config
from device_updater.errors import KeystoreError
from device_updater.keystore import (
    AnchorsAlreadyProvisionedError,
    AnchorsMissingError,
    AnchorsTamperedError,
    TrustAnchors,
)
from device_updater.pcr_binding import PcrSlotKey
from edgepkg import crypto, keys as ekeys
from edgepkg._atomic import atomic_write_bytes
from edgepkg.crypto import EllipticCurvePublicKey, public_key_id
from edgepkg.errors import Error as EdgepkgError
from edgepkg.keys._software import raw_to_der_signature, uncompressed_point

log = logging.getLogger(__name__)

_DIGEST_SIZE = 32


def _load_p256(pem: bytes) -> EllipticCurvePublicKey:
    try:
        return crypto.as_p256_public_key(ekeys.load_public_key(pem), "TPM device key")
    except EdgepkgError as exc:
        raise KeystoreError(f"the TPM device key is not usable: {exc}") from exc


class TpmRecipientKey:
    """The device key as an HPKE recipient: ECDH runs in the TPM (TPM2_ECDH_ZGen)."""

    def __init__(self, tcti: str, handle: int, pub: EllipticCurvePublicKey) -> None:
        self._tcti = tcti
        self._handle = handle
        self._pub = pub
        self._id = public_key_id(pub)
        self.location = f"tpm:{tcti}#0x{handle:08x}"

    @property
    def key_id(self) -> str:
        return self._id

    def public_key(self) -> EllipticCurvePublicKey:
        return self._pub

    def exchange(self, peer: EllipticCurvePublicKey) -> bytes:
        try:
            point = uncompressed_point(crypto.as_p256_public_key(peer, "ECDH peer key"))
        except EdgepkgError as exc:
            raise KeystoreError(str(exc)) from exc
        with _tpm.tpm_session(self._tcti, "ECDH with the device key") as ctx:
            key = _tpm.persistent(ctx, self._handle)
            if key is None:
                raise KeystoreError(f"no device key at TPM handle 0x{self._handle:08x}")
            shared = _tpm.ecdh_zgen(ctx, key, point[1:33], point[33:])
        if len(shared) > 32:
            raise KeystoreError(f"the TPM returned a {len(shared)}-byte ECDH secret, expected 32")
        return shared.rjust(32, b"\0")  # the TPM may drop leading zero bytes of x

    def software_private_key(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"TpmRecipientKey({self._id[:16]}, {self.location})"


class TpmKeystore:
    """Device key (persistent handle) and trust-anchors digest (write-once NV) in a TPM 2.0."""

    def __init__(self, tcti: str, directory: str | os.PathLike[str], *,
                 key_handle: int = _tpm.DEFAULT_KEY_HANDLE,
                 nv_index: int = _tpm.DEFAULT_NV_INDEX,
                 owner_auth: bytes | None = None,
                 pcr_binding: bool = True,
                 pcrs: Sequence[int] = _tpm_policy.DEFAULT_PCRS) -> None:
        _tpm.parse_tcti(tcti)  # a malformed TCTI fails at construction, like a bad token URI
        if not 0x81000000 <= key_handle <= 0x817FFFFF:
            raise KeystoreError("keystore.key_handle must be an owner persistent handle "
                                "(0x81000000-0x817FFFFF)")
        if not 0x01000000 <= nv_index <= 0x013FFFFF:
            raise KeystoreError("keystore.nv_index must be an owner NV index "
                                "(0x01000000-0x013FFFFF)")
        if pcr_binding and key_handle == _tpm_policy.DEFAULT_SRK_HANDLE:
            raise KeystoreError(f"keystore.key_handle 0x{key_handle:08x} is the handle of the "
                                "storage key of the PCR-bound slot key: choose another one")
        self.tcti = tcti
        self.dir = Path(directory)
        self.key_handle = key_handle
        self.nv_index = nv_index
        self._owner_auth = owner_auth
        self._pub: EllipticCurvePublicKey | None = None
        self._recipient: TpmRecipientKey | None = None
        self._slot_key = (PcrSlotKey(tcti, self.dir, pcrs=pcrs, owner_auth=self._owner)
                          if pcr_binding else None)

    def _owner(self) -> bytes | None:
        return self._owner_auth if self._owner_auth is not None else _tpm.owner_auth_from_env()

    # --- device key -----------------------------------------------------------------------

    def _read_public(self) -> EllipticCurvePublicKey | None:
        with _tpm.tpm_session(self.tcti, "reading the device key") as ctx:
            key = _tpm.persistent(ctx, self.key_handle)
            return None if key is None else _load_p256(_tpm.public_pem(ctx, key))

    def ensure_device_key(self) -> EllipticCurvePublicKey:
        pub = self._read_public()
        if pub is None:
            with _tpm.tpm_session(self.tcti, "cannot create the device key in the TPM "
                                  "(owner authorisation: set $"
                                  f"{_tpm.OWNER_AUTH_ENV} if the owner hierarchy has one)"
                                  ) as ctx:
                _tpm.create_persistent_key(ctx, self.key_handle, self._owner())
            log.info("generated the device key inside the TPM",
                     extra={"handle": f"0x{self.key_handle:08x}"})
            pub = self._read_public()
            if pub is None:
                raise KeystoreError("the TPM did not keep the device key it just created")
        if self._slot_key is not None:
            # Provisioning is when the owner authorisation is at hand (the daemon never has it).
            self._slot_key.provision()
        self._pub = pub
        return pub

    def slot_key_guard(self) -> PcrSlotKey | None:
        """The PCR-bound slot key slots are sealed with, or None without ``pcr_binding``."""
        return self._slot_key

    def device_public_key(self) -> EllipticCurvePublicKey:
        if self._pub is None:
            pub = self._read_public()
            if pub is None:
                raise KeystoreError(
                    f"device key not usable in the TPM: nothing at handle "
                    f"0x{self.key_handle:08x}; enroll the device first")
            self._pub = pub
        return self._pub

    def recipient_key(self) -> TpmRecipientKey:
        if self._recipient is None:
            self._recipient = TpmRecipientKey(self.tcti, self.key_handle,
                                              self.device_public_key())
        return self._recipient

    def sign(self, data: bytes) -> bytes:
        pub = self.device_public_key()
        digest = hashlib.sha256(data).digest()
        with _tpm.tpm_session(self.tcti, "the TPM refused to sign") as ctx:
            key = _tpm.persistent(ctx, self.key_handle)
            if key is None:
                raise KeystoreError(f"no device key at TPM handle 0x{self.key_handle:08x}")
            r, s = _tpm.sign_digest(ctx, key, digest)
        if len(r) > 32 or len(s) > 32:
            raise KeystoreError("the TPM returned an ECDSA signature too long for P-256")
        # the TPM may drop leading zero bytes of r and s
        der = raw_to_der_signature(r.rjust(32, b"\0") + s.rjust(32, b"\0"))
        try:  # a faulty TPM must not hand out a bad signature
            crypto.verify_signature(pub, der, data)
        except EdgepkgError:
            raise KeystoreError("the TPM produced a signature that does not verify") from None
        return der

    # --- trust anchors ----------------------------------------------------------------------

    @property
    def _anchors_path(self) -> Path:
        return self.dir / "anchors.json"

    def _nv_digest(self) -> bytes | None:
        """The write-locked anchors digest, or None when the index is absent or was never
        completely provisioned (written and locked)."""
        with _tpm.tpm_session(self.tcti, "cannot read the trust anchors from the TPM") as ctx:
            nv = _tpm.nv_handle(ctx, self.nv_index)
            if nv is None:
                return None
            size, written, locked, writedefine = _tpm.nv_state(ctx, nv)
            if size != _DIGEST_SIZE or not writedefine:
                raise AnchorsTamperedError(
                    f"TPM NV index 0x{self.nv_index:08x} is not a write-once anchors index "
                    f"(size {size}, writedefine {writedefine}): someone with owner "
                    "authorisation redefined it. No update is installed until the device is "
                    "re-provisioned (undefine the index with owner auth, then enroll again)")
            if not (written and locked):
                return None
            return _tpm.nv_read(ctx, nv, _DIGEST_SIZE)

    def trust_anchors(self) -> TrustAnchors:
        digest = self._nv_digest()
        if digest is None:
            raise AnchorsMissingError(
                f"no trust anchors in the TPM (NV index 0x{self.nv_index:08x}); enroll the "
                "device first")
        try:
            raw = self._anchors_path.read_bytes()
        except FileNotFoundError:
            raise AnchorsMissingError(
                f"the TPM holds a trust-anchors digest but {self._anchors_path} is missing; "
                "enroll again with the same trust anchors to restore it") from None
        except OSError as exc:
            raise KeystoreError(f"cannot read {self._anchors_path}: {exc}") from exc
        if not hmac.compare_digest(hashlib.sha256(raw).digest(), digest):
            raise AnchorsTamperedError(
                f"trust anchors tampered with: {self._anchors_path} does not match the digest "
                "write-locked in the TPM. No update is installed; restore the file by enrolling "
                "again with the original trust anchors")
        return TrustAnchors.from_bytes(raw)

    def provision(self, anchors: TrustAnchors) -> None:
        """Write the anchors' digest once into the NV index and lock it; keep the document.

        Provisioning the very same anchors again is a no-op apart from restoring the document
        file (a retried enrollment); different anchors raise
        :class:`AnchorsAlreadyProvisionedError`.
        """
        doc = anchors.to_bytes()
        digest = hashlib.sha256(doc).digest()
        existing = self._nv_digest()
        if existing is not None and not hmac.compare_digest(existing, digest):
            raise AnchorsAlreadyProvisionedError(
                f"the TPM already holds other trust anchors (NV index 0x{self.nv_index:08x}, "
                "write-locked); they cannot be replaced. To re-provision, use the factory path: "
                "with the owner authorisation run 'tpm2_nvundefine "
                f"0x{self.nv_index:08x} -C o' and 'tpm2_evictcontrol -C o -c "
                f"0x{self.key_handle:08x}' (this also replaces the device key), wipe the state "
                "directory, then run 'edge-updater enroll' again")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The document first: a crash after the NV write then finds a file to check against.
        atomic_write_bytes(self._anchors_path, doc, 0o600)
        if existing is not None:
            log.info("the TPM already holds these trust anchors; nothing written")
            return
        with _tpm.tpm_session(self.tcti, "cannot store the trust anchors in the TPM (owner "
                              f"authorisation: set ${_tpm.OWNER_AUTH_ENV} if the owner "
                              "hierarchy has one)") as ctx:
            owner = self._owner()
            nv = _tpm.nv_handle(ctx, self.nv_index)
            if nv is None:
                nv = _tpm.nv_define(ctx, self.nv_index, _DIGEST_SIZE, owner)
            # defined but not yet locked (a provisioning cut short): finish it now
            _tpm.nv_write_and_lock(ctx, nv, digest, owner)

    def describe(self) -> dict[str, Any]:
        return {"type": "tpm", "tcti": self.tcti, "key_handle": f"0x{self.key_handle:08x}",
                "nv_index": f"0x{self.nv_index:08x}",
                "pcr_binding": None if self._slot_key is None else self._slot_key.describe()}


def keystore_from_config(config: Config) -> TpmKeystore:
    """The TPM keystore a ``[keystore] type = "tpm"`` config names; the anchors document lives
    in ``keystore.dir``, by default ``<state_dir>/keystore``."""
    assert config.tcti is not None  # Config checks it for type "tpm"
    return TpmKeystore(
        config.tcti, config.keystore_dir or config.state_dir / "keystore",
        key_handle=config.tpm_key_handle or _tpm.DEFAULT_KEY_HANDLE,
        nv_index=config.tpm_nv_index or _tpm.DEFAULT_NV_INDEX,
        pcr_binding=config.pcr_binding is not False, pcrs=config.pcrs)
