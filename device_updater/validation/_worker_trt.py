"""TensorRT for the runner process (split out: it needs CUDA buffers, the others do not)."""

from __future__ import annotations

from typing import Any

import numpy as np

from device_updater.validation._worker_spec import NotInstalled, Spec, _spec


class TensorRtModel:
    """One input, one output engine; buffers are copied to/from the GPU outside ``invoke``."""

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise NotInstalled("TensorRT is not installed (python package 'tensorrt')") from None
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart
            except ImportError:
                raise NotInstalled("TensorRT needs cuda-python for device buffers") from None
        self.trt, self.cudart = trt, cudart
        logger = trt.Logger(trt.Logger.ERROR)
        with open(path, "rb") as fh:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(fh.read())
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (wrong version/GPU?)")
        self.ctx = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode
        self._ins = [n for n in names if self.engine.get_tensor_mode(n) == mode.INPUT]
        self._outs = [n for n in names if self.engine.get_tensor_mode(n) == mode.OUTPUT]

        def spec(n: str) -> Spec:
            return _spec(n, trt.nptype(self.engine.get_tensor_dtype(n)),
                         list(self.engine.get_tensor_shape(n)))

        self.inputs: list[Spec] = [spec(n) for n in self._ins]
        self.outputs: list[Spec] = [spec(n) for n in self._outs]
        self.runtime = f"tensorrt {trt.__version__}"
        self._bufs: list[Any] = []
        self._host_out: list[np.ndarray] = []

    def _check(self, res: Any) -> Any:
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return res[1] if isinstance(res, tuple) and len(res) > 1 else None

    def set_inputs(self, feed: list[np.ndarray]) -> None:
        cu = self.cudart
        for b in self._bufs:
            cu.cudaFree(b)
        self._bufs, self._host_out = [], []
        for name, x in zip(self._ins, feed, strict=True):
            self.ctx.set_input_shape(name, x.shape)
            d = self._check(cu.cudaMalloc(x.nbytes))
            self._bufs.append(d)
            self._check(cu.cudaMemcpy(d, x.ctypes.data, x.nbytes,
                                      cu.cudaMemcpyKind.cudaMemcpyHostToDevice))
            self.ctx.set_tensor_address(name, int(d))
        for name in self._outs:
            y = np.empty(tuple(self.ctx.get_tensor_shape(name)),
                         dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))
            d = self._check(cu.cudaMalloc(max(y.nbytes, 1)))
            self._bufs.append(d)
            self._host_out.append(y)
            self.ctx.set_tensor_address(name, int(d))

    def invoke(self) -> None:
        if not self.ctx.execute_async_v3(0):
            raise RuntimeError("TensorRT execution failed")
        self._check(self.cudart.cudaStreamSynchronize(0))

    def get_outputs(self) -> list[np.ndarray]:
        cu = self.cudart
        outs = self._bufs[len(self._ins):]
        for y, d in zip(self._host_out, outs, strict=True):
            self._check(cu.cudaMemcpy(y.ctypes.data, d, y.nbytes,
                                      cu.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return [y.copy() for y in self._host_out]
