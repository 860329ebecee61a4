"""What the model builders share (split out so build.py and _build_onnx.py need not import
each other)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgepkg.errors import UsageError

Weights = Sequence[tuple[np.ndarray, np.ndarray]]


def _check_weights(weights: Weights) -> list[tuple[np.ndarray, np.ndarray]]:
    if not weights:
        raise UsageError("an MLP needs at least one (W, b) layer")
    out = []
    prev = None
    for i, (w, b) in enumerate(weights):
        w = np.asarray(w, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise UsageError(
                f"layer {i}: W must be [in, out] and b [out], got {w.shape}, {b.shape}")
        if prev is not None and w.shape[0] != prev:
            raise UsageError(
                f"layer {i}: expects {w.shape[0]} inputs but the previous gives {prev}")
        prev = w.shape[1]
        out.append((w, b))
    return out
