"""Binary deltas between two model plaintexts: make the smallest, apply with bounded memory.

Release side::

    result = make_delta(old_path, new_path, out_path)      # tries every applicable method
    result.method, result.delta_size, result.sizes         # what won, and what each method gave

Device side::

    apply_delta(old_path, delta_path_or_stream, out_path,
                expected_sha256=manifest.plaintext_sha256,
                expected_length=manifest.plaintext_length)

A delta file is self-describing (see ``_format``): magic, format version, method, base and target
length + SHA-256, then the method's stream.  Methods:

- ``tensor``: XOR / byte-subtract against the old bytes at the aligned place (shifts found by an
  anchor index), residual split into byte planes, zstd.  Best on float weights (fine-tune: ~53 %
  where generic tools give ~93 %) and int8 re-quantization.  Streams both ways.
- ``zstd-window``: each 4 MiB segment zstd-compressed with the matching old region (+-2 MiB) as
  a raw-content dictionary.  Generic: any content, moves within the margin.
- ``bsdiff``: BSDIFF40 via bsdiff4 (diff needs ~18x the old file in RAM, so only up to
  ``max_bsdiff_bytes``); applied here as a stream.

Memory bound of each method's *apply* is given by :func:`delta_method_bounds`.

The package imports lazily: ``edgepkg.delta._format`` (the pure header parser the device reads
first) must stay importable without numpy, zstandard or bsdiff4, and Python imports a package's
``__init__`` before any of its modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names, for type checkers and readers; loaded on first use below
    from edgepkg.delta._api import (
        DEFAULT_MAX_BSDIFF_BYTES,
        DEFAULT_MAX_ZWINDOW_BYTES,
        METHODS,
        ChunkStream,
        DeltaResult,
        apply_delta,
        apply_delta_to,
        delta_method_bounds,
        make_delta,
        read_delta_header,
    )
    from edgepkg.delta._format import (
        DeltaHeader,
    )
    from edgepkg.delta._io import (
        DeltaBaseError,
    )

_WHERE = {
    "DEFAULT_MAX_BSDIFF_BYTES": "_api",
    "DEFAULT_MAX_ZWINDOW_BYTES": "_api",
    "METHODS": "_api",
    "ChunkStream": "_api",
    "DeltaBaseError": "_io",
    "DeltaHeader": "_format",
    "DeltaResult": "_api",
    "apply_delta": "_api",
    "apply_delta_to": "_api",
    "delta_method_bounds": "_api",
    "make_delta": "_api",
    "read_delta_header": "_api",
}

__all__ = [
    "DEFAULT_MAX_BSDIFF_BYTES",
    "DEFAULT_MAX_ZWINDOW_BYTES",
    "METHODS",
    "ChunkStream",
    "DeltaBaseError",
    "DeltaHeader",
    "DeltaResult",
    "apply_delta",
    "apply_delta_to",
    "delta_method_bounds",
    "make_delta",
    "read_delta_header",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
