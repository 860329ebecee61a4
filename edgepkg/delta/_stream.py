"""Apply a delta into a writable object instead of a file path (one pass, no temp plaintext).

A device seals the rebuilt model straight into its slot writer (which hashes and encrypts as
bytes arrive) instead of writing a temporary plaintext and reading it back.  Same checks as
:func:`edgepkg.delta.apply_delta`: the base must match the delta header, the output never
exceeds ``expected_length`` and must hash to ``expected_sha256`` -- but the caller owns ``out``
and must discard what it received when this raises.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol

from edgepkg.delta._format import HEADER_SIZE, parse_header
from edgepkg.delta._io import BoundedWriter, OldFile, file_sha256, read_exact
from edgepkg.errors import DeltaError, UsageError

__all__ = ["DeltaBaseError", "Writable", "apply_delta_to"]


class DeltaBaseError(DeltaError):
    """The base file is not the one the delta was made against (nothing was written)."""


class Writable(Protocol):
    def write(self, data: bytes) -> object: ...


def apply_delta_to(
    old_path: str | os.PathLike[str],
    delta: BinaryIO,
    out: Writable,
    *,
    expected_sha256: str,
    expected_length: int,
    max_delta_bytes: int | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Rebuild the target from ``old_path`` and the ``delta`` stream, writing it to ``out``.

    Raises :class:`DeltaBaseError` before writing anything when the base does not match,
    DeltaError (corrupt/truncated delta, SHA-256 mismatch at the end) or TooLargeError.
    ``spool_dir`` is where a non-seekable bsdiff delta is spooled (default: the base's folder).
    """
    from edgepkg.delta import _apply_bsdiff, _Counted, _tensor, _zwindow

    if expected_length < 0:
        raise UsageError("expected_length must be >= 0")
    expected_sha256 = expected_sha256.lower()
    limit = max_delta_bytes if max_delta_bytes is not None else 2 * expected_length + (64 << 20)
    header = parse_header(read_exact(delta, HEADER_SIZE, "header"))
    if header.new_length != expected_length or header.new_sha256 != expected_sha256:
        raise DeltaError("this delta builds a different file than the expected target")
    old_len, old_sha = file_sha256(old_path)
    if old_len != header.old_length or old_sha != header.old_sha256:
        raise DeltaBaseError(
            f"wrong base: the delta needs a base with SHA-256 {header.old_sha256}, "
            f"the given file has {old_sha}"
        )
    with open(old_path, "rb") as ofh:
        old = OldFile(ofh, old_len)
        writer = BoundedWriter(out, expected_length)  # type: ignore[arg-type]
        if header.method == "bsdiff":
            spool = Path(spool_dir) if spool_dir is not None else Path(old_path).parent
            _apply_bsdiff(old, delta, writer, limit, spool)
        else:
            decode = _tensor.apply if header.method == "tensor" else _zwindow.apply
            decode(old, _Counted(delta, limit), writer)  # type: ignore[arg-type]
            if delta.read(1):
                raise DeltaError("delta has trailing data after its end marker (corrupt)")
        if writer.count != expected_length:
            raise DeltaError(
                f"delta rebuilt {writer.count} bytes, expected {expected_length} (truncated?)"
            )
        if writer.hexdigest() != expected_sha256:
            raise DeltaError("rebuilt file does not match the expected SHA-256 (corrupt delta)")
