"""The runner process: load one model with its runtime, run the holdout inputs, save outputs.

Started by :class:`device_updater.validation.runners.BuiltinRunner` as
``python -m device_updater.validation._worker``; reads one JSON request on stdin::

    {"format": "onnx"|"tflite"|"tflm"|"edgetpu"|"tensorrt", "model": PATH, "inputs": PATH.npy,
     "outputs": PATH.npy, "options": {"arena_size": int, "memory_limit_bytes": int}}

runs every sample one at a time (batch 1, what a device does), writes the stacked outputs to
``outputs`` and prints one JSON line ``{"latencies_ms": [...], "runtime": "name version"}``.
Exit status: 0 done, 3 the runtime is not installed, 1 any other failure (message on stderr).
A crash in native runtime code kills only this process; the parent sees the signal.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

EXIT_NOT_INSTALLED = 3


class NotInstalled(Exception):
    pass


Infer = Callable[[np.ndarray], np.ndarray]


def _quantize(x: np.ndarray, dtype: Any, scale: float, zero_point: int) -> np.ndarray:
    if scale == 0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if scale == 0 or not np.issubdtype(y.dtype, np.integer):
        return y.astype(np.float32)
    return (y.astype(np.float32) - zero_point) * scale


def _onnx(model: str, options: dict[str, Any]) -> tuple[Infer, str]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise NotInstalled(f"onnxruntime is not installed: {exc}") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(options.get("threads", 1))
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
             "tensor(float16)": np.float16}.get(inp.type, np.float32)

    def infer(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {inp.name: x.astype(dtype)})[0])

    return infer, f"onnxruntime {ort.__version__}"


def _litert(model: str, options: dict[str, Any], delegate: str | None = None) -> tuple[Infer, str]:
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError as exc:
        raise NotInstalled(f"ai-edge-litert is not installed: {exc}") from None
    delegates = []
    if delegate:
        try:
            delegates = [litert.load_delegate(delegate)]
        except (ValueError, OSError) as exc:
            raise NotInstalled(f"delegate {delegate} cannot be loaded: {exc}") from None
    it = litert.Interpreter(model_path=model, num_threads=int(options.get("threads", 1)),
                            experimental_delegates=delegates or None)
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    resized = False

    def infer(x: np.ndarray) -> np.ndarray:
        nonlocal resized
        if not resized:
            if list(inp["shape"]) != list(x.shape):
                it.resize_tensor_input(inp["index"], list(x.shape))
            it.allocate_tensors()
            resized = True
        if np.issubdtype(inp["dtype"], np.integer) and not np.issubdtype(x.dtype, np.integer):
            x = _quantize(x, inp["dtype"], *inp["quantization"])
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        return _dequantize(np.asarray(it.get_tensor(out["index"])), *out["quantization"])

    version = getattr(litert, "__version__", "") or _dist_version("ai-edge-litert")
    return infer, f"litert {version}".strip()


def _tflm(model: str, options: dict[str, Any]) -> tuple[Infer, str]:
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:
        raise NotInstalled(f"tflite-micro is not installed: {exc}") from None
    arena = options.get("arena_size")
    it = runtime.Interpreter.from_file(model, arena_size=int(arena) if arena else None)
    inp = it.get_input_details(0)
    out = it.get_output_details(0)

    def qparams(d: dict[str, Any]) -> tuple[float, int]:
        q = d.get("quantization_parameters") or {}
        scales, zps = list(q.get("scales", [])), list(q.get("zero_points", []))
        return (float(scales[0]) if scales else 0.0, int(zps[0]) if zps else 0)

    in_dtype = np.dtype(inp["dtype"])
    in_shape = [int(v) for v in inp["shape"]]

    def infer(x: np.ndarray) -> np.ndarray:
        if np.issubdtype(in_dtype, np.integer) and not np.issubdtype(x.dtype, np.integer):
            x = _quantize(x, in_dtype, *qparams(inp))
        it.set_input(x.astype(in_dtype).reshape(in_shape), 0)
        it.invoke()
        return _dequantize(np.array(it.get_output(0)), *qparams(out))

    return infer, f"tflite-micro {_dist_version('tflite-micro')}".strip()


def _tensorrt(model: str, options: dict[str, Any]) -> tuple[Infer, str]:
    try:
        import tensorrt as trt
    except ImportError:
        raise NotInstalled("TensorRT is not installed (python package 'tensorrt')") from None
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError:
            raise NotInstalled("TensorRT needs cuda-python for device buffers") from None
    logger = trt.Logger(trt.Logger.ERROR)
    with open(model, "rb") as fh:
        engine = trt.Runtime(logger).deserialize_cuda_engine(fh.read())
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the engine (wrong version/GPU?)")
    ctx = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def check(res: Any) -> Any:
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return res[1] if isinstance(res, tuple) and len(res) > 1 else None

    def infer(x: np.ndarray) -> np.ndarray:
        in_dtype = trt.nptype(engine.get_tensor_dtype(ins[0]))
        x = np.ascontiguousarray(x.astype(in_dtype))
        ctx.set_input_shape(ins[0], x.shape)
        out_shape = tuple(ctx.get_tensor_shape(outs[0]))
        y = np.empty(out_shape, dtype=trt.nptype(engine.get_tensor_dtype(outs[0])))
        d_in = check(cudart.cudaMalloc(x.nbytes))
        d_out = check(cudart.cudaMalloc(y.nbytes))
        try:
            check(cudart.cudaMemcpy(d_in, x.ctypes.data, x.nbytes,
                                    cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            ctx.set_tensor_address(ins[0], int(d_in))
            ctx.set_tensor_address(outs[0], int(d_out))
            if not ctx.execute_async_v3(0):
                raise RuntimeError("TensorRT execution failed")
            check(cudart.cudaStreamSynchronize(0))
            check(cudart.cudaMemcpy(y.ctypes.data, d_out, y.nbytes,
                                    cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        finally:
            cudart.cudaFree(d_in)
            cudart.cudaFree(d_out)
        return y

    return infer, f"tensorrt {trt.__version__}"


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - metadata missing is not an error here
        return ""


def load(fmt: str, model: str, options: dict[str, Any]) -> tuple[Infer, str]:
    if fmt == "onnx":
        return _onnx(model, options)
    if fmt == "tflite":
        return _litert(model, options)
    if fmt == "edgetpu":
        return _litert(model, options, delegate=str(options.get("delegate", "libedgetpu.so.1")))
    if fmt == "tflm":
        return _tflm(model, options)
    if fmt == "tensorrt":
        return _tensorrt(model, options)
    raise NotInstalled(f"no built-in runner for format {fmt!r}; configure an external command")


_MODULES = {"onnx": "onnxruntime", "tflite": "ai_edge_litert.interpreter",
            "edgetpu": "ai_edge_litert.interpreter",
            "tflm": "tflite_micro.python.tflite_micro.runtime", "tensorrt": "tensorrt"}


def _preimport(fmt: str) -> None:
    import importlib

    name = _MODULES.get(fmt)
    if name is None:
        return
    try:
        importlib.import_module(name)
    except ImportError as exc:
        raise NotInstalled(f"{name} is not installed: {exc}") from None


def main() -> int:
    try:
        req = json.loads(sys.stdin.read(1 << 16))
        options = dict(req.get("options") or {})
        fmt = str(req["format"])
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        inputs = np.load(req["inputs"], allow_pickle=False)
        _preimport(fmt)  # import the runtime first: a memory limit must not look like "missing"
        limit = options.get("memory_limit_bytes")
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
        infer, runtime_name = load(fmt, str(req["model"]), options)
        outs, lat = [], []
        for i in range(inputs.shape[0]):
            x = inputs[i : i + 1]
            t0 = time.perf_counter()
            y = infer(x)
            lat.append((time.perf_counter() - t0) * 1000.0)
            outs.append(np.asarray(y).reshape(1, -1))
        np.save(req["outputs"], np.concatenate(outs, axis=0) if outs else np.zeros((0, 0)),
                allow_pickle=False)
        print(json.dumps({"latencies_ms": lat, "runtime": runtime_name}))
        return 0
    except NotInstalled as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_NOT_INSTALLED
    except Exception as exc:  # noqa: BLE001 - any runtime failure is reported to the parent
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
