"""At-rest sealing of slot content: the sealed-file framing around edgepkg's crypto.

A slot's model is sealed to the device's own P-256 key (:class:`BundleSealer`): a random
per-slot data key wrapped with HPKE and the AES-256-GCM chunked stream, both from
:mod:`edgepkg.crypto` (the one door to ``cryptography``; this module never imports it). What
lives here is the file framing (magic, header, chunking of pushed writes) and the mapping of
crypto failures to :class:`~device_updater.errors.SealError`.

With a ``guard`` (:class:`SlotKeyGuard`: the TPM's PCR-bound slot key,
:mod:`device_updater.pcr_binding`) the stream key also needs the guard's secret, so a slot opens
only with the device key *and* in the measured device state it was sealed for.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from device_updater._fsutil import canonical_json
from device_updater.errors import SealedToOtherStateError, SealError
from edgepkg import crypto
from edgepkg.errors import Error as EdgepkgError

if TYPE_CHECKING:
    from edgepkg.keys._types import RecipientKey


class SealingWriter(Protocol):
    """Push plaintext in; sealed bytes go to the file the sealer was given."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Write the final (authenticated last) part. Must be called exactly once."""
        ...


class Sealer(Protocol):
    """Encrypts slot content at rest and decrypts it again (see :class:`BundleSealer`)."""

    def seal(self, out: BinaryIO, aad: bytes) -> SealingWriter:
        """Start a sealed stream written to ``out``, bound to ``aad``."""
        ...

    def unseal(self, src: BinaryIO, aad: bytes) -> Iterator[bytes]:
        """Yield authenticated plaintext chunks; raise :class:`SealError` on any mismatch."""
        ...


class SlotKeyGuard(Protocol):
    """A secret the slot stream key also depends on, released by the TPM only in the measured
    state it was sealed to (:class:`device_updater.pcr_binding.PcrSlotKey`)."""

    @property
    def name(self) -> str:
        """Recorded in the sealed header, so unsealing knows the slot needs this guard."""
        ...

    def secret(self) -> bytes:
        """32 bytes; raises :class:`~device_updater.errors.SealedToOtherStateError` (never a
        :class:`SealError`) when the device is not in the state the secret was sealed to."""
        ...


@runtime_checkable
class GuardedKeystore(Protocol):
    """A keystore that may bind slots to the device state (the TPM keystore)."""

    def slot_key_guard(self) -> SlotKeyGuard | None: ...


def sealer_for(keystore: object, recipient: RecipientKey) -> BundleSealer:
    """The slot sealer for a keystore: to its device key, plus its slot-key guard if it has one
    (``[keystore] pcr_binding`` on a TPM)."""
    guard = keystore.slot_key_guard() if isinstance(keystore, GuardedKeystore) else None
    return BundleSealer(recipient, guard=guard)


_SEAL_MAGIC = b"EPSLOT1\n"
_MAX_SEAL_HEADER = 16 * 1024


class _BundleSealingWriter:
    """Cuts pushed plaintext into ``chunk_size`` chunks and seals them as they fill.

    One full chunk is held back: only :meth:`close` knows whether it is the last one, which the
    stream's nonce must say (so the bytes equal :func:`edgepkg.crypto.seal_chunks` output).
    """

    def __init__(self, out: BinaryIO, data_key: bytes, aad: bytes, chunk_size: int) -> None:
        self._out = out
        self._chunk_size = chunk_size
        self._buf = bytearray()
        self._pending: bytes | None = None
        self._stream = crypto.StreamSealer(data_key, aad)
        self._closed = False

    def _push(self, chunk: bytes) -> None:
        if self._pending is not None:
            self._out.write(self._stream.seal(self._pending, last=False))
        self._pending = chunk

    def write(self, data: bytes) -> None:
        if self._closed:
            raise SealError("write after close")
        mv = memoryview(data)
        size = self._chunk_size
        if self._buf:
            take = size - len(self._buf)
            self._buf += mv[:take]
            mv = mv[take:]
            if len(self._buf) < size:
                return
            self._push(bytes(self._buf))
            self._buf.clear()
        while len(mv) >= size:  # no quadratic copying for one huge write
            self._push(bytes(mv[:size]))
            mv = mv[size:]
        self._buf += mv

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._buf:
            self._push(bytes(self._buf))
            self._buf.clear()
        # An empty model still gets one (empty) authenticated last chunk.
        self._out.write(self._stream.seal(self._pending or b"", last=True))
        self._pending = None


class BundleSealer:
    """Seal slot content to the device's own P-256 key, edgepkg-bundle style.

    Sealed file: ``EPSLOT1\\n`` + u32 header length + JSON header (chunk size, HPKE-wrapped
    random data key, recipient key id) + the AES-256-GCM chunked stream of
    :func:`edgepkg.crypto.seal_chunks`. Both the HPKE ``info`` and the stream's associated data
    are bound to ``aad`` (the model's signed summary). Unsealing unwraps the data key through
    ``key.exchange`` (the ECDH runs inside the token for a PKCS#11 key).
    """

    def __init__(self, key: RecipientKey, *, chunk_size: int = 256 * 1024,
                 guard: SlotKeyGuard | None = None) -> None:
        if not 4096 <= chunk_size <= 16 << 20:
            raise SealError("chunk_size must be between 4 KiB and 16 MiB")
        self._key = key
        self._chunk_size = chunk_size
        self._guard = guard

    def _stream_key(self, data_key: bytes, binding: str | None, aad: bytes) -> bytes:
        """The stream key: the data key itself, or bound to the guard's secret when the slot
        was sealed with one (header ``binding``). Slots sealed before binding was turned on
        keep opening with the device key alone until they are rewritten."""
        if binding is None:
            return data_key
        if self._guard is None or binding != self._guard.name:
            raise SealError(
                f"this slot is bound to the device state ({binding}) but this updater is not "
                "configured for it: set [keystore] pcr_binding = true (TPM keystore)")
        secret = self._guard.secret()  # SealedToOtherStateError passes through as it is
        try:
            return crypto.bind_slot_key(data_key, secret, self._info(aad))
        except EdgepkgError as exc:
            raise SealError(f"cannot bind the slot key: {exc}") from exc

    @staticmethod
    def _info(aad: bytes) -> bytes:
        return b"edgepkg-slot-seal-v1\n" + aad

    def seal(self, out: BinaryIO, aad: bytes) -> SealingWriter:
        data_key = crypto.new_data_key()
        try:
            wrapped = crypto.wrap_data_key(data_key, self._key.public_key(), self._info(aad))
        except EdgepkgError as exc:
            raise SealError(f"cannot seal to the device key: {exc}") from exc
        binding = self._guard.name if self._guard is not None else None
        # Before anything is written: a device in another state must not start a slot file.
        stream_key = self._stream_key(data_key, binding, aad)
        fields: dict[str, object] = {} if binding is None else {"binding": binding}
        header = canonical_json({
            **fields,
            "chunk_size": self._chunk_size,
            "key_id": self._key.key_id,
            "wrapped_key": base64.b64encode(wrapped).decode(),
            "aead": crypto.AEAD_NAME,
            "hpke": crypto.HPKE_SUITE_NAME,
        })
        out.write(_SEAL_MAGIC + struct.pack(">I", len(header)) + header)
        return _BundleSealingWriter(out, stream_key, aad, self._chunk_size)

    def unseal(self, src: BinaryIO, aad: bytes) -> Iterator[bytes]:
        head = src.read(len(_SEAL_MAGIC) + 4)
        if len(head) != len(_SEAL_MAGIC) + 4 or not head.startswith(_SEAL_MAGIC):
            raise SealError("sealed slot file has no valid header (damaged or not a slot file)")
        (hlen,) = struct.unpack(">I", head[len(_SEAL_MAGIC):])
        if hlen > _MAX_SEAL_HEADER:
            raise SealError("sealed slot header is too large")
        try:
            header = json.loads(src.read(hlen))
            chunk_size = int(header["chunk_size"])
            wrapped = base64.b64decode(header["wrapped_key"], validate=True)
            binding = header.get("binding")
            if binding is not None and not isinstance(binding, str):
                raise TypeError("binding is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            raise SealError(f"sealed slot header is malformed: {exc}") from None
        if not 1 <= chunk_size <= 16 << 20:
            raise SealError("sealed slot header has a bad chunk size")
        try:
            data_key = crypto.unwrap_data_key(wrapped, self._key, self._info(aad))
            stream_key = self._stream_key(data_key, binding, aad)
            yield from crypto.open_chunks(stream_key, src.read, chunk_size, aad)
        except SealedToOtherStateError:
            raise  # the device state changed; the slot is fine (see the error's docstring)
        except SealError:
            raise
        except EdgepkgError as exc:
            raise SealError(
                f"sealed slot content does not open with the device key: {exc}") from exc
