"""Slots bound to the device's measured state: the slot key sealed to TPM PCR values.

With a TPM keystore and ``[keystore] pcr_binding = true`` (the default for ``type = "tpm"``),
every sealed slot needs, besides the device key (HPKE, ECDH in the TPM), a 32-byte **slot key**
that the TPM releases only while the PCRs ``[keystore] pcrs`` (sha256 bank, default 0, 2, 4, 7:
firmware, option ROMs, boot manager, Secure Boot policy) hold the values they had when it was
sealed (:mod:`device_updater._tpm_policy`). A changed boot chain, or the disk moved to another
machine, makes :meth:`PcrSlotKey.secret` raise :class:`SealedToOtherStateError`.

``keystore.dir`` holds:

* ``slot-key.json``: the PCR list and the public/private blobs of the PCR copy and the owner copy
  (TPM-encrypted; useless without this TPM, its storage key and the right state or owner auth);
* ``sealed-state.json``: present only while the daemon finds the slot key sealed to another
  state, so that ``edge-updater status`` can say so without touching the TPM.

:meth:`PcrSlotKey.reseal` (``edge-updater reseal``) unseals the owner copy with the owner
authorisation and seals the same slot key again to the *current* PCR values: the slots on disk
stay as they are and open again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_updater import _tpm, _tpm_policy
from device_updater.errors import KeystoreError, SealedToOtherStateError
from edgepkg import crypto
from edgepkg._atomic import atomic_write_bytes

log = logging.getLogger(__name__)

SLOT_KEY_FILE = "slot-key.json"
SEALED_STATE_FILE = "sealed-state.json"
BINDING_NAME = "tpm-pcr-v1"
_MAX_FILE = 64 * 1024


def check_pcrs(pcrs: Sequence[int]) -> tuple[int, ...]:
    """Validated PCR indices (0-23, no repeats, at least one), sorted."""
    out = tuple(sorted(set(pcrs)))
    if not out or len(out) != len(pcrs) or any(not 0 <= p <= 23 for p in out):
        raise KeystoreError(f"PCR list {list(pcrs)!r} must name distinct PCRs between 0 and 23")
    return out


@dataclass(frozen=True)
class SealedSlotKey:
    """``slot-key.json``: the two TPM-sealed copies of the slot key."""

    pcrs: tuple[int, ...]
    pcr_copy: tuple[bytes, bytes]  # (public, private) blobs, policy PolicyPCR
    owner_copy: tuple[bytes, bytes]  # (public, private) blobs, policy PolicySecret(owner)
    srk_handle: int
    sealed_at: float

    def to_bytes(self) -> bytes:
        def b64(blobs: tuple[bytes, bytes]) -> dict[str, str]:
            return {"public": base64.b64encode(blobs[0]).decode(),
                    "private": base64.b64encode(blobs[1]).decode()}
        return json.dumps({
            "version": 1, "bank": _tpm_policy.PCR_BANK, "pcrs": list(self.pcrs),
            "srk_handle": f"0x{self.srk_handle:08x}", "sealed_at": self.sealed_at,
            "pcr_copy": b64(self.pcr_copy), "owner_copy": b64(self.owner_copy),
        }, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, where: Path) -> SealedSlotKey:
        def blobs(d: Any) -> tuple[bytes, bytes]:
            return (base64.b64decode(d["public"], validate=True),
                    base64.b64decode(d["private"], validate=True))
        try:
            doc = json.loads(raw)
            if doc.get("version") != 1 or doc.get("bank") != _tpm_policy.PCR_BANK:
                raise ValueError("unknown version or PCR bank")
            return cls(check_pcrs([int(p) for p in doc["pcrs"]]), blobs(doc["pcr_copy"]),
                       blobs(doc["owner_copy"]), int(doc["srk_handle"], 16),
                       float(doc["sealed_at"]))
        except (ValueError, KeyError, TypeError, AttributeError, KeystoreError) as exc:
            raise KeystoreError(
                f"{where} is damaged ({exc}); restore it from a backup, or re-provision the "
                "device (the sealed models cannot be opened without it)") from None


def read_sealed_state(directory: Path) -> dict[str, Any] | None:
    """What the daemon last recorded about a slot key sealed to another state (for ``status``;
    reads one small file, never the TPM), or None when nothing is recorded."""
    try:
        raw = (directory / SEALED_STATE_FILE).read_bytes()[:_MAX_FILE]
        doc = json.loads(raw)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class PcrSlotKey:
    """The slot key sealed to PCR values in a TPM (``guard`` of a :class:`BundleSealer`)."""

    name = BINDING_NAME

    def __init__(self, tcti: str, directory: Path, *, pcrs: Sequence[int],
                 srk_handle: int = _tpm_policy.DEFAULT_SRK_HANDLE,
                 owner_auth: Callable[[], bytes | None] = _tpm.owner_auth_from_env) -> None:
        self.tcti = tcti
        self.dir = Path(directory)
        self.pcrs = check_pcrs(pcrs)
        self.srk_handle = srk_handle
        self._owner_auth = owner_auth

    @property
    def path(self) -> Path:
        return self.dir / SLOT_KEY_FILE

    def _read(self) -> SealedSlotKey | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeystoreError(f"cannot read {self.path}: {exc}") from exc
        if len(raw) > _MAX_FILE:
            raise KeystoreError(f"{self.path} is larger than {_MAX_FILE} bytes: damaged")
        return SealedSlotKey.from_bytes(raw, self.path)

    def _write(self, sealed: SealedSlotKey) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(self.path, sealed.to_bytes(), 0o600)

    # --- provisioning ----------------------------------------------------------------------

    def provision(self) -> bool:
        """Create the slot key and seal both copies, unless ``slot-key.json`` exists already
        (then nothing changes: the slots on disk depend on that key). Needs the owner
        authorisation (storage key, owner copy's policy). True when a key was created."""
        if self._read() is not None:
            return False
        key = crypto.new_data_key()
        owner = self._owner_auth()
        with _tpm.tpm_session(self.tcti, "cannot seal the slot key in the TPM (owner "
                              f"authorisation: set ${_tpm.OWNER_AUTH_ENV} if the owner hierarchy "
                              "has one)") as ctx:
            srk = _tpm_policy.ensure_srk(ctx, self.srk_handle, owner)
            pcr_copy = _tpm_policy.seal(ctx, srk, key, _tpm_policy.pcr_policy_digest(
                ctx, self.pcrs))
            owner_copy = _tpm_policy.seal(ctx, srk, key, _tpm_policy.owner_policy_digest(
                ctx, owner))
        self._write(SealedSlotKey(self.pcrs, pcr_copy, owner_copy, self.srk_handle, time.time()))
        log.info("slot key sealed to the TPM's PCR values",
                 extra={"pcrs": list(self.pcrs), "bank": _tpm_policy.PCR_BANK})
        return True

    # --- daemon ----------------------------------------------------------------------------

    def _other_state(self, sealed: SealedSlotKey, cause: str) -> SealedToOtherStateError:
        pcrs = f"{_tpm_policy.PCR_BANK}:{','.join(map(str, sealed.pcrs))}"
        msg = (f"the models on this device are sealed to another device state ({cause}; PCRs "
               f"{pcrs}): the boot chain changed (firmware, boot loader, kernel, Secure Boot "
               "settings) or this disk was moved to another device. Sealed models stay closed: "
               "no install, switch or export until an administrator who trusts the change runs "
               f"'edge-updater reseal' with the owner authorisation (${_tpm.OWNER_AUTH_ENV})")
        if not (self.dir / SEALED_STATE_FILE).exists():
            try:
                atomic_write_bytes(self.dir / SEALED_STATE_FILE, json.dumps({
                    "state": "sealed_to_other_state", "since": time.time(),
                    "pcrs": list(sealed.pcrs), "bank": _tpm_policy.PCR_BANK, "reason": msg,
                }).encode(), 0o600)
            except OSError as exc:  # reporting must not hide the error itself
                log.warning("cannot record the sealed state for status: %s", exc)
        log.error("slot key sealed to another device state", extra={"error": msg})
        return SealedToOtherStateError(msg)

    def _state_ok(self) -> None:
        marker = self.dir / SEALED_STATE_FILE
        if marker.exists():
            try:
                os.unlink(marker)
                log.info("the slot key opens again in the current device state")
            except OSError as exc:
                log.warning("cannot remove %s: %s", marker, exc)

    def secret(self) -> bytes:
        """The slot key, unsealed with the current PCR values (no secret needed); raises
        :class:`SealedToOtherStateError` when the PCRs or the TPM are not those it was sealed
        to. A device enrolled before PCR binding gets its key here on first use (which works
        when the owner hierarchy has no authorisation or it is in the environment)."""
        sealed = self._read()
        if sealed is None:
            self.provision()
            sealed = self._read()
            assert sealed is not None
        with _tpm.tpm_session(self.tcti, "cannot unseal the slot key") as ctx:
            srk = _tpm_policy.srk(ctx, sealed.srk_handle)
            if srk is None:
                raise self._other_state(
                    sealed, f"this TPM has no storage key at 0x{sealed.srk_handle:08x}")
            try:
                key = _tpm_policy.unseal_with_pcrs(ctx, srk, sealed.pcr_copy, sealed.pcrs)
            except _tpm_policy.TSS2_Exception as exc:
                if _tpm_policy.is_other_state(exc):
                    raise self._other_state(sealed, f"the TPM refused: {exc}") from None
                raise
        if len(key) != 32:
            raise KeystoreError(f"the TPM unsealed a {len(key)}-byte slot key, expected 32")
        self._state_ok()
        return key

    # --- re-seal after a legitimate OS update ------------------------------------------------

    def reseal(self, pcrs: Sequence[int] | None = None) -> SealedSlotKey:
        """Seal the slot key again to the *current* values of ``pcrs`` (default: the PCRs it
        was sealed to). Needs the owner authorisation: the key comes from the owner copy."""
        sealed = self._read()
        if sealed is None:
            raise KeystoreError(
                f"no sealed slot key in {self.dir}: nothing to re-seal (the daemon creates it at "
                "enrollment or first install)")
        new_pcrs = check_pcrs(pcrs) if pcrs is not None else sealed.pcrs
        owner = self._owner_auth()
        with _tpm.tpm_session(self.tcti, "cannot re-seal the slot key") as ctx:
            srk = _tpm_policy.srk(ctx, sealed.srk_handle)
            if srk is None:
                raise self._other_state(
                    sealed, f"this TPM has no storage key at 0x{sealed.srk_handle:08x}")
            try:
                key = _tpm_policy.unseal_with_owner(ctx, srk, sealed.owner_copy, owner)
            except _tpm_policy.TSS2_Exception as exc:
                if _tpm_policy.is_bad_auth(exc):
                    raise KeystoreError(
                        "re-seal refused: the TPM did not accept the owner authorisation (set "
                        f"${_tpm.OWNER_AUTH_ENV} to the owner hierarchy's authorisation)"
                    ) from None
                if _tpm_policy.is_other_state(exc):
                    raise self._other_state(sealed, f"the TPM refused: {exc}") from None
                raise
            pcr_copy = _tpm_policy.seal(ctx, srk, key, _tpm_policy.pcr_policy_digest(
                ctx, new_pcrs))
            # Proves the new copy opens in this state before it replaces the old one.
            if _tpm_policy.unseal_with_pcrs(ctx, srk, pcr_copy, new_pcrs) != key:
                raise KeystoreError("the re-sealed slot key does not unseal to the same key")
        resealed = SealedSlotKey(new_pcrs, pcr_copy, sealed.owner_copy, sealed.srk_handle,
                                 time.time())
        self._write(resealed)
        self._state_ok()
        log.warning("slot key re-sealed to the current PCR values",
                    extra={"pcrs": list(new_pcrs), "bank": _tpm_policy.PCR_BANK})
        return resealed

    def describe(self) -> dict[str, Any]:
        sealed = self._read()
        return {"binding": BINDING_NAME, "bank": _tpm_policy.PCR_BANK,
                "pcrs": list(sealed.pcrs if sealed else self.pcrs),
                "sealed_at": sealed.sealed_at if sealed else None,
                "sealed_state": read_sealed_state(self.dir)}
