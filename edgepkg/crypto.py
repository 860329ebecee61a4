"""The one door to symmetric and hybrid crypto: HPKE key wrapping and the chunked AEAD stream.

* **Data-key wrapping**: HPKE (RFC 9180) base mode, DHKEM(P-256, HKDF-SHA256) / HKDF-SHA256 /
  AES-256-GCM, through ``cryptography``'s :class:`hpke.Suite`. When the recipient's private key
  lives in a PKCS#11 token, the Diffie-Hellman step runs *in the token*
  (:meth:`RecipientKey.exchange`) and the rest of the RFC 9180 receiver (KEM ``ExtractAndExpand``,
  key schedule, AEAD open) runs here with ``cryptography``'s HKDF/HMAC/AES-GCM. A test checks
  that this path opens what ``hpke.Suite.encrypt`` sealed, byte for byte the same key.
* **Payload stream**: AES-256-GCM per chunk; the 96-bit nonce is the chunk index (88 bits) and a
  last-chunk flag (8 bits), the associated data is the SHA-256 of the signed manifest. Reordered,
  dropped, duplicated or spliced chunks and truncation all fail authentication (the STREAM
  construction of Hoang, Reyhanitabar, Rogaway and Vizár).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from edgepkg.errors import (
    BadSignatureError,
    KeyError_,
    NotARecipientError,
    TamperedError,
    TruncatedError,
)

if TYPE_CHECKING:  # edgepkg.keys imports this module: keep the dependency one-way at run time
    from edgepkg.keys._types import PublicKey, RecipientKey

DATA_KEY_BYTES = 32
TAG_BYTES = 16
HPKE_SUITE_NAME = "DHKEM(P-256,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"
AEAD_NAME = "AES-256-GCM/STREAM"
_SUITE = Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)

# RFC 9180 identifiers for the suite above.
_KEM_ID, _KDF_ID, _AEAD_ID = 0x0010, 0x0001, 0x0002
_NENC = 65  # uncompressed P-256 point
_NSECRET, _NK, _NN = 32, 32, 12
_MAX_CHUNK_INDEX = (1 << 88) - 1


# --- keys ------------------------------------------------------------------------------------


def public_key_id(public_key: PublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo: the key id used everywhere in edgepkg."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def signing_algorithm(public_key: PublicKey) -> str:
    """The edgepkg name of the signature scheme a public key verifies ('' if unsupported)."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return "ecdsa-p256-sha256"
    return ""


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def verify_signature(public_key: PublicKey, signature: bytes, data: bytes) -> None:
    """Verify an Ed25519 or ECDSA-P256-SHA256 (DER) signature; raise BadSignatureError."""
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, ec.SECP256R1):
                raise BadSignatureError(f"unsupported signing curve {public_key.curve.name}")
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise BadSignatureError(f"unsupported signing key type {type(public_key).__name__}")
    except InvalidSignature:
        raise BadSignatureError("signature does not verify with the signer's public key") from None
    except ValueError as exc:  # malformed DER signature
        raise BadSignatureError(f"malformed signature: {exc}") from None


# --- HPKE data-key wrapping ------------------------------------------------------------------


def wrap_data_key(data_key: bytes, recipient: ec.EllipticCurvePublicKey, info: bytes) -> bytes:
    """HPKE-seal ``data_key`` to a P-256 recipient; returns ``enc || ciphertext``."""
    if not isinstance(recipient, ec.EllipticCurvePublicKey) or not isinstance(
        recipient.curve, ec.SECP256R1
    ):
        raise KeyError_("recipient keys must be P-256 public keys (so a TPM/HSM can hold them)")
    return _SUITE.encrypt(data_key, recipient, info=info)


def unwrap_data_key(wrapped: bytes, key: RecipientKey, info: bytes) -> bytes:
    """Open an HPKE-wrapped data key with ``key``; raise NotARecipientError if it does not open."""
    if len(wrapped) != _NENC + DATA_KEY_BYTES + TAG_BYTES:
        raise TamperedError("wrapped data key has the wrong length")
    private = key.software_private_key()
    try:
        if private is not None:
            data_key = _SUITE.decrypt(wrapped, private, info=info)
        else:
            data_key = _hpke_open_with_exchange(wrapped, key, info)
    except (InvalidTag, ValueError):
        raise NotARecipientError(
            f"the data key wrapped for key {key.key_id[:16]}… does not open with that key "
            "(wrong key, or the wrapped key or manifest was modified)"
        ) from None
    if len(data_key) != DATA_KEY_BYTES:
        raise TamperedError("unwrapped data key has the wrong length")
    return data_key


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    h = hmac.HMAC(salt or b"\x00" * 32, hashes.SHA256())
    h.update(b"HPKE-v1" + suite_id + label + ikm)
    return h.finalize()


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled_info).derive(prk)


def _hpke_open_with_exchange(wrapped: bytes, key: RecipientKey, info: bytes) -> bytes:
    """RFC 9180 base-mode single-shot open where DH(skR, pkE) is done by ``key.exchange``."""
    enc, ciphertext = wrapped[:_NENC], wrapped[_NENC:]
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc)
    dh = key.exchange(peer)
    pk_rm = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    kem_suite = b"KEM" + _KEM_ID.to_bytes(2, "big")
    eae_prk = _labeled_extract(kem_suite, b"", b"eae_prk", dh)
    shared_secret = _labeled_expand(kem_suite, eae_prk, b"shared_secret", enc + pk_rm, _NSECRET)

    hpke_suite = b"HPKE" + b"".join(i.to_bytes(2, "big") for i in (_KEM_ID, _KDF_ID, _AEAD_ID))
    psk_id_hash = _labeled_extract(hpke_suite, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(hpke_suite, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(hpke_suite, shared_secret, b"secret", b"")
    aead_key = _labeled_expand(hpke_suite, secret, b"key", context, _NK)
    base_nonce = _labeled_expand(hpke_suite, secret, b"base_nonce", context, _NN)
    return AESGCM(aead_key).decrypt(base_nonce, ciphertext, b"")


# --- chunked AEAD stream ---------------------------------------------------------------------


def _chunk_nonce(index: int, last: bool) -> bytes:
    if index > _MAX_CHUNK_INDEX:
        raise TamperedError("too many chunks")
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def seal_chunks(data_key: bytes, chunks: Iterable[bytes], aad: bytes) -> Iterator[bytes]:
    """Encrypt plaintext chunks; the last one (looked ahead) gets the last-chunk flag.

    An empty input still yields one (empty) last chunk, so an empty stream is authenticated too.
    """
    aead = AESGCM(data_key)
    index = 0
    pending: bytes | None = None
    for chunk in chunks:
        if pending is not None:
            yield aead.encrypt(_chunk_nonce(index, False), pending, aad)
            index += 1
        pending = bytes(chunk)
    yield aead.encrypt(_chunk_nonce(index, True), pending or b"", aad)


def open_chunks(
    data_key: bytes,
    read: Callable[[int], bytes],
    chunk_size: int,
    aad: bytes,
    *,
    expected_length: int | None = None,
) -> Iterator[bytes]:
    """Decrypt a stream written by :func:`seal_chunks` with plaintext chunks of ``chunk_size``.

    ``read(n)`` returns up to ``n`` bytes (``b""`` at end). Every chunk is authenticated before
    its plaintext is yielded; the stream must end exactly after the chunk flagged last.
    ``expected_length`` (the ciphertext length, when the container records it) only sharpens the
    error: a stream that ends early is reported as truncated rather than tampered.
    Raises TamperedError (modified, reordered, spliced) or TruncatedError (cut short).
    """
    aead = AESGCM(data_key)
    full = chunk_size + TAG_BYTES
    index = 0
    consumed = 0
    current = _read_exact(read, full)
    while True:
        consumed += len(current)
        if not current:
            raise TruncatedError(f"payload ends before its last chunk (after {index} chunks)")
        nxt = b"" if len(current) < full else _read_exact(read, full)
        last = not nxt
        try:
            plain = aead.decrypt(_chunk_nonce(index, last), current, aad)
        except InvalidTag:
            short = last and expected_length is not None and consumed < expected_length
            raise _classify_chunk_failure(aead, index, last, current, aad, short) from None
        yield plain
        if last:
            if expected_length is not None and consumed != expected_length:
                raise TamperedError("payload length does not match the bundle header")
            return
        index += 1
        current = nxt


def _classify_chunk_failure(
    aead: AESGCM, index: int, last: bool, data: bytes, aad: bytes, short: bool
) -> Exception:
    if short:
        return TruncatedError(f"payload ends early, inside or after chunk {index}")
    if last:
        # A chunk that authenticates as *not* last, followed by end of file: cut at a boundary.
        try:
            aead.decrypt(_chunk_nonce(index, False), data, aad)
        except InvalidTag:
            pass
        else:
            return TruncatedError(f"payload was cut after chunk {index}: the last chunk is missing")
    return TamperedError(
        f"payload chunk {index} failed authentication (modified, reordered or from another bundle)"
    )


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    parts: list[bytes] = []
    remaining = n
    while remaining:
        block = read(remaining)
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


# --- slot sealing (device) -------------------------------------------------------------------


class StreamSealer:
    """Push-style writer of the :func:`seal_chunks` stream, for callers that receive plaintext
    piece by piece (the device seals a model into its slot as it is downloaded).

    The caller says which chunk is the last; the bytes are exactly those :func:`seal_chunks`
    makes for the same chunks, so :func:`open_chunks` opens them. After the last chunk the
    sealer refuses more: a chunk after the authenticated end would never be read back.
    """

    def __init__(self, data_key: bytes, aad: bytes) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise KeyError_(f"a data key is {DATA_KEY_BYTES} bytes, got {len(data_key)}")
        self._aead = AESGCM(data_key)
        self._aad = aad
        self._index = 0
        self._finished = False

    def seal(self, chunk: bytes, *, last: bool) -> bytes:
        """Encrypt the next chunk; ``last`` marks the end of the stream."""
        if self._finished:
            raise TamperedError("the sealed stream already ended; no chunk may follow the last")
        sealed = self._aead.encrypt(_chunk_nonce(self._index, last), bytes(chunk), self._aad)
        self._index += 1
        self._finished = last
        return sealed


# --- key type names (edgepkg keys wing) -------------------------------------------------------
# Modules outside the crypto door name key types (annotations, isinstance checks) through these
# aliases, so that they need not import cryptography.hazmat themselves.
Ed25519PublicKey = ed25519.Ed25519PublicKey
Ed25519PrivateKey = ed25519.Ed25519PrivateKey
EllipticCurvePublicKey = ec.EllipticCurvePublicKey
EllipticCurvePrivateKey = ec.EllipticCurvePrivateKey


# --- key grants ------------------------------------------------------------------------------


def as_p256_public_key(key: PublicKey, what: str = "device key") -> ec.EllipticCurvePublicKey:
    """``key`` typed as a P-256 public key (what HPKE wraps to); KeyError_ for any other key."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyError_(f"the {what} must be a P-256 public key (an HPKE recipient)")
    return key


# --- device request keys (server side) -------------------------------------------------------
# The update server authenticates devices by their P-256 keys; these helpers keep its use of
# hazmat behind this door. The server holds PEM strings, never key objects.

MAX_DEVICE_KEY_PEM_BYTES = 4096
DevicePrivateKey = ec.EllipticCurvePrivateKey
"""A software device key (test and benchmark clients only; real devices keep theirs in a token)."""


def load_device_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """Parse a device's P-256 public key PEM; raise UntrustedInputError naming what is wrong."""
    from edgepkg.errors import UntrustedInputError

    if not isinstance(pem, str) or not pem.strip():
        raise UntrustedInputError("public_key_pem must be a non-empty PEM string")
    data = pem.encode("utf-8", "replace")
    if len(data) > MAX_DEVICE_KEY_PEM_BYTES:
        raise UntrustedInputError("public_key_pem is too long")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UntrustedInputError(f"public_key_pem is not a valid public key PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UntrustedInputError("the device key must be an ECDSA P-256 (secp256r1) public key")
    return key


def device_public_key_id(pem: str) -> str:
    """The key id (= device id) of a device public key PEM; raise UntrustedInputError."""
    from edgepkg.protocol import key_id_from_spki

    der = load_device_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key_id_from_spki(der)


# Parsed device keys by PEM: every signed request checks its device's key, parsing costs more
# than verifying. Bounded; cleared wholesale when full (keys are cheap to parse again).
_DEVICE_KEYS: dict[str, ec.EllipticCurvePublicKey] = {}
_MAX_CACHED_DEVICE_KEYS = 65536


def verify_device_signature(public_key_pem: str, signature: bytes, message: bytes) -> None:
    """Verify an ECDSA-P256-SHA256 DER signature by a device key given as PEM.

    Raise UntrustedInputError when the PEM is unusable, BadSignatureError when the signature
    does not verify (malformed DER included).
    """
    key = _DEVICE_KEYS.get(public_key_pem)
    if key is None:
        key = load_device_public_key(public_key_pem)
        if len(_DEVICE_KEYS) >= _MAX_CACHED_DEVICE_KEYS:
            _DEVICE_KEYS.clear()
        _DEVICE_KEYS[public_key_pem] = key
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise BadSignatureError("request signature does not verify with the device key") from None


def new_device_key() -> DevicePrivateKey:
    """A fresh software P-256 device key."""
    return ec.generate_private_key(ec.SECP256R1())


def sign_device_message(private_key: DevicePrivateKey, message: bytes) -> bytes:
    """ECDSA-P256-SHA256 DER signature of ``message`` (test and benchmark device clients)."""
    return private_key.sign(message, ec.ECDSA(hashes.SHA256()))


def device_public_pem(private_key: DevicePrivateKey) -> str:
    """The SubjectPublicKeyInfo PEM of a software device key."""
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# --- packaging pipeline ----------------------------------------------------------------------
# Records of the chunked payload ("zstd-chunked" bundles): each chunk is sealed like a STREAM
# chunk (same nonce: index + last flag) and its kind (zstd frame or stored raw) is appended to the
# associated data, so flipping a chunk's raw flag fails authentication like any other change.
# Both classes are safe to share between threads (each call makes its own cipher context), so a
# worker pool can seal or open chunks while another thread reads or writes.


class RecordSealer:
    """Seal chunk ``index`` (``last`` marks the final one) of kind ``kind`` (0..255)."""

    def __init__(self, data_key: bytes, aad: bytes) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise KeyError_(f"a data key is {DATA_KEY_BYTES} bytes, got {len(data_key)}")
        self._aead = AESGCM(data_key)
        self._aad = aad

    def seal(self, index: int, last: bool, kind: int, data: bytes) -> bytes:
        return self._aead.encrypt(_chunk_nonce(index, last), data, self._aad + bytes([kind]))


class RecordOpener:
    """Open what :class:`RecordSealer` sealed; every failure is a typed, actionable error."""

    def __init__(self, data_key: bytes, aad: bytes) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise TamperedError("the data key has the wrong length")
        self._aead = AESGCM(data_key)
        self._aad = aad

    def open(self, index: int, last: bool, kind: int, sealed: bytes) -> bytes:
        aad = self._aad + bytes([kind])
        try:
            return self._aead.decrypt(_chunk_nonce(index, last), sealed, aad)
        except InvalidTag:
            pass
        if last:  # authenticates as *not* last, and nothing follows: cut at a chunk boundary
            try:
                self._aead.decrypt(_chunk_nonce(index, False), sealed, aad)
            except InvalidTag:
                pass
            else:
                raise TruncatedError(
                    f"payload was cut after chunk {index}: the last chunk is missing"
                ) from None
        raise TamperedError(
            f"payload chunk {index} failed authentication (modified, reordered, its raw/compressed "
            "flag changed, or from another bundle)"
        ) from None
