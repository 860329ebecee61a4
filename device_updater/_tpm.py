"""The TPM 2.0 primitives the TPM keystore needs, through the TSS (tpm2-pytss's ESAPI).

Why the TSS and not tpm2-pkcs11: Debian 12's ``libtpm2-pkcs11-1`` (1.9.0) advertises no
``CKM_ECDH1_DERIVE`` and refuses EC key pairs with ``CKA_DERIVE=true``, so the device's HPKE
receiver (ECDH inside the token) cannot run through PKCS#11 on a TPM as shipped. The TSS gives
``TPM2_ECDH_ZGen`` (ECDH), ``TPM2_Sign`` (ECDSA) and NV storage directly.

Every operation opens its own ESAPI connection and closes it (:func:`tpm_session`): swtpm's
socket serves one client at a time and a hardware TPM is shared with other software through the
kernel resource manager (``/dev/tpmrm0``), so the daemon never holds the TPM between calls and no
transient object outlives the call that made it (no "out of object contexts" as seen with
``tpm2_ptool`` on a bare swtpm).

This module and :mod:`device_updater.keystore_tpm` are keystore adapters, allowed by the house
rules to talk to the token library (tpm2-pytss itself uses ``cryptography``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from device_updater.errors import KeystoreError

# libtss2 logs every TPM error response on stderr by default; failures reach the operator as
# KeystoreError messages instead. Must be set before libtss2 logs its first line.
os.environ.setdefault("TSS2_LOG", "all+NONE")

try:  # the [tpm] extra: tpm2-pytss, built against Debian's libtss2
    from tpm2_pytss import ESAPI, TSS2_Exception
    from tpm2_pytss.constants import (
        ESYS_TR,
        TPM2_ALG,
        TPM2_ECC,
        TPM2_RC,
        TPM2_RH,
        TPM2_ST,
        TPMA_NV,
        TPMA_OBJECT,
    )
    from tpm2_pytss.TCTILdr import TCTILdr
    from tpm2_pytss.types import (
        TPM2B_AUTH,
        TPM2B_DIGEST,
        TPM2B_ECC_POINT,
        TPM2B_NV_PUBLIC,
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPMS_ECC_POINT,
        TPMS_NV_PUBLIC,
        TPMS_SCHEME_HASH,
        TPMT_SIG_SCHEME,
        TPMT_TK_HASHCHECK,
        TPMU_SIG_SCHEME,
    )

    HAVE_TPM2_PYTSS = True
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_TPM2_PYTSS = False

# Owner-hierarchy persistent handle for the device key and owner NV index for the anchors
# digest: both in the owner ranges of the TCG handle registry (0x81000000.., 0x01000000..),
# away from the well-known SRK (0x81000001) and EK (0x81010001) handles.
DEFAULT_KEY_HANDLE = 0x81000E01
DEFAULT_NV_INDEX = 0x01000E16
OWNER_AUTH_ENV = "EDGE_UPDATER_TPM_OWNER_AUTH"

# The device key: generated inside the TPM (sensitiveDataOrigin), bound to this TPM and to its
# parent (fixedTPM|fixedParent: TPM2_Duplicate is refused, so the private part can never leave),
# usable for both ECDSA (sign) and ECDH_ZGen (decrypt), with an empty authValue: the daemon runs
# unattended, and a secret it needs would sit on the same disk anyway.
_DEVICE_KEY_ATTRS = "FIXEDTPM|FIXEDPARENT|SENSITIVEDATAORIGIN|USERWITHAUTH|SIGN_ENCRYPT|DECRYPT"


def require_pytss() -> None:
    if not HAVE_TPM2_PYTSS:
        raise KeystoreError(
            "the TPM keystore needs tpm2-pytss: install edgepkg with the [tpm] extra "
            "(pip install 'edgepkg[tpm]'; it builds against libtss2-dev)")


def parse_tcti(tcti: str) -> tuple[str, str]:
    """``"swtpm:host=127.0.0.1,port=2321"`` -> ``("swtpm", "host=127.0.0.1,port=2321")``;
    ``"device:/dev/tpmrm0"``, ``"tabrmd:bus_type=session"``, ``"mssim:..."`` likewise."""
    name, _, conf = tcti.partition(":")
    if not name or not name.replace("-", "").isalnum():
        raise KeystoreError(
            f"keystore.tcti {tcti!r} is not a TCTI string such as 'device:/dev/tpmrm0' or "
            "'swtpm:host=127.0.0.1,port=2321'")
    return name, conf


def owner_auth_from_env() -> bytes | None:
    value = os.environ.get(OWNER_AUTH_ENV)
    return value.encode() if value else None


def rc_of(exc: BaseException) -> int | None:
    """The TPM response code (format-one parameter bits stripped) of a TSS error, else None."""
    rc = getattr(exc, "rc", None)
    if not isinstance(rc, int):
        return None
    return rc & 0xBF if rc & 0x80 else rc & 0xFFF


def is_rc(exc: BaseException, *codes: int) -> bool:
    got = rc_of(exc)
    return got is not None and any(got == (c & 0xBF if c & 0x80 else c & 0xFFF) for c in codes)


@contextlib.contextmanager
def tpm_session(tcti: str, what: str) -> Iterator[Any]:
    """An ESAPI context for one operation; TSS errors become :class:`KeystoreError` naming
    ``what`` (callers that must tell TPM errors apart catch ``TSS2_Exception`` inside)."""
    require_pytss()
    name, conf = parse_tcti(tcti)
    try:
        ctx = ESAPI(TCTILdr(name, conf))
    except (TSS2_Exception, RuntimeError, OSError) as exc:
        raise KeystoreError(
            f"cannot reach the TPM through TCTI {tcti!r} ({exc}): is the TPM (or swtpm / "
            "tpm2-abrmd) running and does this user have access to it?") from exc
    try:
        yield ctx
    except TSS2_Exception as exc:
        raise KeystoreError(f"{what}: the TPM refused ({exc})") from exc
    finally:
        with contextlib.suppress(TSS2_Exception, RuntimeError):
            ctx.close()


def persistent(ctx: Any, handle: int) -> Any | None:
    """The ESYS_TR of a persistent handle, or None when nothing lives there."""
    try:
        return ctx.tr_from_tpmpublic(handle)
    except TSS2_Exception as exc:
        if is_rc(exc, TPM2_RC.HANDLE, TPM2_RC.REFERENCE_H0, TPM2_RC.VALUE):
            return None
        raise


def public_pem(ctx: Any, obj: Any) -> bytes:
    pub, _name, _qname = ctx.read_public(obj)
    area = pub.publicArea
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        raise KeystoreError("the TPM object at the device key handle is not a P-256 key")
    return bytes(pub.to_pem())


def object_attributes(ctx: Any, obj: Any) -> Any:
    pub, _name, _qname = ctx.read_public(obj)
    return pub.publicArea.objectAttributes


def set_owner_auth(ctx: Any, owner_auth: bytes | None) -> None:
    if owner_auth:
        ctx.tr_set_auth(ESYS_TR.OWNER, TPM2B_AUTH(owner_auth))


def create_persistent_key(ctx: Any, handle: int, owner_auth: bytes | None) -> None:
    """Create the P-256 device key under a transient owner-hierarchy SRK and make it persistent
    at ``handle`` (TPM2_EvictControl, owner auth). The SRK is recreated from the owner seed by
    the same template whenever needed, so only the device key takes a persistent slot."""
    set_owner_auth(ctx, owner_auth)
    srk_template = TPM2B_PUBLIC.parse(
        "ecc256:aes128cfb",
        objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS)
    srk, _pub, _data, _digest, _ticket = ctx.create_primary(
        TPM2B_SENSITIVE_CREATE(), srk_template, ESYS_TR.OWNER)
    try:
        template = TPM2B_PUBLIC.parse("ecc256", objectAttributes=_DEVICE_KEY_ATTRS)
        priv, pub, _data, _digest, _ticket = ctx.create(srk, TPM2B_SENSITIVE_CREATE(), template)
        key = ctx.load(srk, priv, pub)
        try:
            ctx.evict_control(ESYS_TR.OWNER, key, handle)
        finally:
            ctx.flush_context(key)
    finally:
        ctx.flush_context(srk)


def sign_digest(ctx: Any, key: Any, digest: bytes) -> tuple[bytes, bytes]:
    """TPM2_Sign with ECDSA/SHA-256 over a 32-byte digest: the (r, s) big-endian integers."""
    scheme = TPMT_SIG_SCHEME(
        scheme=TPM2_ALG.ECDSA,
        details=TPMU_SIG_SCHEME(ecdsa=TPMS_SCHEME_HASH(hashAlg=TPM2_ALG.SHA256)))
    # A null ticket: the digest was made outside the TPM, which an unrestricted key accepts.
    ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
    sig = ctx.sign(key, TPM2B_DIGEST(digest), scheme, ticket)
    return bytes(sig.signature.ecdsa.signatureR), bytes(sig.signature.ecdsa.signatureS)


def ecdh_zgen(ctx: Any, key: Any, x: bytes, y: bytes, *, session: Any = None) -> bytes:
    """TPM2_ECDH_ZGen: the x coordinate of d·Q for the peer point Q=(x, y)."""
    point = TPM2B_ECC_POINT(TPMS_ECC_POINT(x=x, y=y))
    if session is None:
        out = ctx.ecdh_zgen(key, point)
    else:
        out = ctx.ecdh_zgen(key, point, session1=session)
    return bytes(out.point.x)


# --- NV (trust anchors) ------------------------------------------------------------------------

# Owner writes (owner auth), anyone reads (the daemon, with the index's empty authValue),
# TPMA_NV_WRITEDEFINE: once TPM2_NV_WriteLock has run, the index stays write-locked for good
# (across TPM2_Startup) until it is undefined, which takes owner authorisation.
NV_ATTRS = "OWNERWRITE|OWNERREAD|AUTHREAD|WRITEDEFINE|NO_DA"


def nv_handle(ctx: Any, index: int) -> Any | None:
    return persistent(ctx, index)


def nv_state(ctx: Any, nv: Any) -> tuple[int, bool, bool, bool]:
    """(data size, written, write-locked, defined with WRITEDEFINE) of an NV index."""
    pub, _name = ctx.nv_read_public(nv)
    attrs = pub.nvPublic.attributes
    return (int(pub.nvPublic.dataSize), bool(attrs & TPMA_NV.WRITTEN),
            bool(attrs & TPMA_NV.WRITELOCKED), bool(attrs & TPMA_NV.WRITEDEFINE))


def nv_define(ctx: Any, index: int, size: int, owner_auth: bytes | None) -> Any:
    set_owner_auth(ctx, owner_auth)
    public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=index, nameAlg=TPM2_ALG.SHA256,
        attributes=TPMA_NV.parse(NV_ATTRS.lower()), dataSize=size))
    return ctx.nv_define_space(TPM2B_AUTH(), public, ESYS_TR.OWNER)


def nv_write_and_lock(ctx: Any, nv: Any, data: bytes, owner_auth: bytes | None) -> None:
    set_owner_auth(ctx, owner_auth)
    ctx.nv_write(nv, data, 0, auth_handle=ESYS_TR.OWNER)
    ctx.nv_write_lock(nv, auth_handle=ESYS_TR.OWNER)


def nv_read(ctx: Any, nv: Any, size: int) -> bytes:
    return bytes(ctx.nv_read(nv, size, 0, auth_handle=nv))


def nv_written_locked_rc() -> tuple[int, ...]:
    return (TPM2_RC.NV_LOCKED,)
