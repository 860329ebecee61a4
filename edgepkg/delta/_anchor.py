"""Where did this piece of the new file come from in the old one?  An anchor index.

The old file is sampled every STRIDE bytes (8-byte keys, unique keys only).  Probing a window
of STRIDE consecutive positions of the new file finds any shared run of >= STRIDE + 8 bytes, and
each hit votes for a shift ``old_offset - new_offset``.  Memory: 16 bytes per STRIDE bytes of
the old file (128 MB for 512 MB with STRIDE 64).
"""

from __future__ import annotations

from collections import Counter
from typing import BinaryIO

import numpy as np

STRIDE = 64
_READ = STRIDE * 65536  # 4 MiB


class AnchorIndex:
    def __init__(self, old: BinaryIO, old_len: int, *, stride: int = STRIDE) -> None:
        self.stride = stride
        keys: list[np.ndarray] = []
        base = 0
        old.seek(0)
        while base + 8 <= old_len:
            buf = old.read(_READ)
            if not buf:
                break
            m = (len(buf) - 8) // stride + 1 if len(buf) >= 8 else 0
            arr = np.frombuffer(buf, dtype=np.uint8)
            full = len(buf) // stride
            k = arr[: full * stride].reshape(full, stride)[:, :8].copy().view("<u8").ravel()
            if m > full:  # a last partial stride that still holds 8 bytes
                k = np.concatenate([k, arr[full * stride : full * stride + 8].copy().view("<u8")])
            keys.append(k)
            base += len(buf)
        allk = np.concatenate(keys) if keys else np.zeros(0, dtype="<u8")
        pos = np.arange(allk.size, dtype=np.int64) * stride
        order = np.argsort(allk, kind="stable")
        sk = allk[order]
        del allk
        # keep only keys that occur once: repeated content (zeros, padding) says nothing.
        if sk.size:
            uniq = np.ones(sk.size, dtype=bool)
            same = sk[1:] == sk[:-1]
            uniq[1:] &= ~same
            uniq[:-1] &= ~same
            self._keys = sk[uniq]
            self._pos = pos[order[uniq]]
        else:
            self._keys = sk
            self._pos = pos

    def hits(self, new: np.ndarray, windows: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Anchor hits in the piece ``new`` (uint8): (offset in ``new``, aligned old offset)."""
        n = new.size
        s = self.stride
        empty = np.zeros(0, dtype=np.int64)
        if n < s + 8 or self._keys.size == 0:
            return empty, empty
        starts = np.linspace(0, n - s - 8, num=min(windows, max(1, n // s)), dtype=np.int64)
        view = np.lib.stride_tricks.sliding_window_view
        at, old_start = [], []
        for w in starts:
            probe = view(new[w : w + s + 7], 8).copy().view("<u8").ravel()
            idx = np.searchsorted(self._keys, probe)
            idx[idx >= self._keys.size] = 0
            hit = self._keys[idx] == probe
            if hit.any():
                rel = np.nonzero(hit)[0] + w
                at.append(rel)
                old_start.append(self._pos[idx[hit]] - rel)
        if not at:
            return empty, empty
        return np.concatenate(at), np.concatenate(old_start)

    def shifts(self, new: np.ndarray, windows: int = 16) -> list[tuple[int, int]]:
        """(old offset aligned with the start of ``new``, votes), most voted first."""
        _, old_start = self.hits(new, windows)
        return Counter(old_start.tolist()).most_common()
