"""Small helpers shared by the CLI modules: JSON output and progress on a terminal."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: int | None) -> None:
        self._label = label
        self._total = total
        self._done = 0
        self._enabled = sys.stderr.isatty()
        self._last_pct = -1

    def __call__(self, nbytes: int) -> None:
        self._done += nbytes
        if not self._enabled:
            return
        if self._total:
            pct = min(100, self._done * 100 // self._total)
            if pct == self._last_pct:
                return
            self._last_pct = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self._label} [{bar:<25}] {pct:3d}%")
        else:
            sys.stderr.write(f"\r{self._label} {self._done / 1e6:.1f} MB")
        sys.stderr.flush()

    def close(self) -> None:
        if self._enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
