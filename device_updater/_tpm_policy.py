"""TPM 2.0 sealed data under a policy: the slot key bound to PCR values (measured boot).

The slot key (32 random bytes) is kept in two TPM *sealed data objects* (keyedhash, no
``userWithAuth``, so only a policy session can unseal them), children of a storage key:

* the **PCR copy**, policy ``TPM2_PolicyPCR(sha256:<pcrs>)`` over the PCR values at sealing
  time: the daemon unseals it with no secret at all, but only while the boot chain measured into
  those PCRs is the same;
* the **owner copy**, policy ``TPM2_PolicySecret(TPM_RH_OWNER)``: whoever knows the owner
  hierarchy's authorisation can unseal it, which is what ``edge-updater reseal`` does after a
  legitimate OS update to make a new PCR copy for the new values.

Their public/private blobs (the private part is encrypted by the storage key and only loads in
the TPM that made it) live in the keystore directory. The storage key is a persistent primary
(default ``0x81000E11``, made once with owner authorisation at provisioning) so that the daemon
can load the blobs without the owner authorisation, which must stay off the device.

Like :mod:`device_updater._tpm`, a keystore adapter: it talks to the TPM through tpm2-pytss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from device_updater import _tpm
from device_updater.errors import KeystoreError

if _tpm.HAVE_TPM2_PYTSS:
    from tpm2_pytss import TSS2_Exception as TSS2_Exception  # re-exported for pcr_binding
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC, TPM2_SE, TPMA_OBJECT
    from tpm2_pytss.types import (
        TPM2B_DIGEST,
        TPM2B_PRIVATE,
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPM2B_SENSITIVE_DATA,
        TPML_PCR_SELECTION,
        TPMS_SENSITIVE_CREATE,
        TPMT_SYM_DEF,
    )

DEFAULT_SRK_HANDLE = 0x81000E11
DEFAULT_PCRS: tuple[int, ...] = (0, 2, 4, 7)
PCR_BANK = "sha256"

# Bound to this TPM and to its storage key; NODA: a failed policy check must not count towards
# the TPM's dictionary-attack lockout (a changed boot chain fails every start-up).
_SEALED_ATTRS = "FIXEDTPM|FIXEDPARENT|NODA"


def _selection(pcrs: Sequence[int]) -> Any:
    return TPML_PCR_SELECTION.parse(f"{PCR_BANK}:{','.join(str(p) for p in pcrs)}")


def _policy_session(ctx: Any, trial: bool) -> Any:
    return ctx.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL if trial else TPM2_SE.POLICY,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)


def _flush(ctx: Any, handle: Any) -> None:
    try:
        ctx.flush_context(handle)
    except TSS2_Exception:  # already gone (a policy session ends with the command it authorised)
        pass


def srk(ctx: Any, handle: int) -> Any | None:
    """The persistent storage key, or None when this TPM has none at ``handle``."""
    obj = _tpm.persistent(ctx, handle)
    if obj is not None:
        attrs = _tpm.object_attributes(ctx, obj)
        if not (attrs & TPMA_OBJECT.RESTRICTED and attrs & TPMA_OBJECT.DECRYPT):
            raise KeystoreError(
                f"TPM handle 0x{handle:08x} holds an object that is not a storage key; the "
                "PCR-bound slot key needs it for its storage key (free it with "
                f"'tpm2_evictcontrol -C o -c 0x{handle:08x}', or move the other object)")
    return obj


def ensure_srk(ctx: Any, handle: int, owner_auth: bytes | None) -> Any:
    """The storage key at ``handle``, created (owner authorisation) and made persistent first
    if missing. Same template as the transient parent of the device key (tpm2-tools' default
    primary: ECC P-256, AES-128-CFB, restricted decrypt)."""
    existing = srk(ctx, handle)
    if existing is not None:
        return existing
    _tpm.set_owner_auth(ctx, owner_auth)
    template = TPM2B_PUBLIC.parse(
        "ecc256:aes128cfb", objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS)
    primary, _pub, _data, _digest, _ticket = ctx.create_primary(
        TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.OWNER)
    try:
        return ctx.evict_control(ESYS_TR.OWNER, primary, handle)
    finally:
        _flush(ctx, primary)


def pcr_policy_digest(ctx: Any, pcrs: Sequence[int]) -> bytes:
    """The policy digest of PolicyPCR over the *current* values of ``pcrs`` (trial session)."""
    session = _policy_session(ctx, trial=True)
    try:
        ctx.policy_pcr(session, TPM2B_DIGEST(), _selection(pcrs))
        return bytes(ctx.policy_get_digest(session))
    finally:
        _flush(ctx, session)


def owner_policy_digest(ctx: Any, owner_auth: bytes | None) -> bytes:
    """The policy digest of PolicySecret(TPM_RH_OWNER) (needs the owner authorisation)."""
    _tpm.set_owner_auth(ctx, owner_auth)
    session = _policy_session(ctx, trial=True)
    try:
        ctx.policy_secret(ESYS_TR.OWNER, session)
        return bytes(ctx.policy_get_digest(session))
    finally:
        _flush(ctx, session)


def seal(ctx: Any, parent: Any, data: bytes, policy: bytes) -> tuple[bytes, bytes]:
    """A sealed data object holding ``data`` under ``parent``: its (public, private) blobs."""
    template = TPM2B_PUBLIC.parse("keyedhash", objectAttributes=_SEALED_ATTRS,
                                  authPolicy=policy)
    sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(data)))
    priv, pub, _data, _digest, _ticket = ctx.create(parent, sensitive, template)
    return bytes(pub.marshal()), bytes(priv.marshal())


def _load(ctx: Any, parent: Any, blobs: tuple[bytes, bytes]) -> Any:
    pub, _ = TPM2B_PUBLIC.unmarshal(blobs[0])
    priv, _ = TPM2B_PRIVATE.unmarshal(blobs[1])
    return ctx.load(parent, priv, pub)


def unseal_with_pcrs(ctx: Any, parent: Any, blobs: tuple[bytes, bytes],
                     pcrs: Sequence[int]) -> bytes:
    """Unseal the PCR copy: PolicyPCR with the current values, which the TPM compares with the
    object's policy (TPM_RC_POLICY_FAIL when they differ)."""
    obj = _load(ctx, parent, blobs)
    try:
        session = _policy_session(ctx, trial=False)
        try:
            ctx.policy_pcr(session, TPM2B_DIGEST(), _selection(pcrs))
            return bytes(ctx.unseal(obj, session1=session))
        finally:
            _flush(ctx, session)
    finally:
        _flush(ctx, obj)


def unseal_with_owner(ctx: Any, parent: Any, blobs: tuple[bytes, bytes],
                      owner_auth: bytes | None) -> bytes:
    """Unseal the owner copy: PolicySecret(TPM_RH_OWNER) proves the owner authorisation."""
    obj = _load(ctx, parent, blobs)
    try:
        _tpm.set_owner_auth(ctx, owner_auth)
        session = _policy_session(ctx, trial=False)
        try:
            ctx.policy_secret(ESYS_TR.OWNER, session)
            return bytes(ctx.unseal(obj, session1=session))
        finally:
            _flush(ctx, session)
    finally:
        _flush(ctx, obj)


def is_other_state(exc: BaseException) -> bool:
    """The TPM error says "not in the state (or not the TPM) this was sealed for": PCR values
    differ (POLICY_FAIL), or the blob was made by another TPM / storage key (INTEGRITY)."""
    return _tpm.is_rc(exc, TPM2_RC.POLICY_FAIL, TPM2_RC.INTEGRITY, TPM2_RC.PCR_CHANGED)


def is_bad_auth(exc: BaseException) -> bool:
    return _tpm.is_rc(exc, TPM2_RC.BAD_AUTH, TPM2_RC.AUTH_FAIL)
