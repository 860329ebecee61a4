"""What every runtime adapter of the validation worker shares: the I/O spec of a model and
the errors an adapter raises (split out so the TensorRT adapter and the worker need not import
each other)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class NotInstalled(Exception):
    pass


class ContractError(Exception):
    pass


Spec = dict[str, Any]  # {"name", "dtype", "shape", "quantization": [scale, zp] | None}


class Model(Protocol):
    inputs: list[Spec]
    outputs: list[Spec]
    runtime: str

    def set_inputs(self, feed: list[np.ndarray]) -> None: ...
    def invoke(self) -> None: ...
    def get_outputs(self) -> list[np.ndarray]: ...


def _spec(name: str, dtype: Any, shape: Any, scale: float = 0.0, zp: int = 0) -> Spec:
    dims = [int(d) if isinstance(d, int | np.integer) and int(d) >= 0 else -1
            for d in list(shape)]
    quant = [float(scale), int(zp)] if scale and np.issubdtype(np.dtype(dtype), np.integer) \
        else None
    return {"name": str(name), "dtype": np.dtype(dtype).name, "shape": dims, "quantization": quant}
