"""The runner process: load a model with its runtime, feed the holdout, time only ``invoke``.

Started by :mod:`device_updater.validation.runners` as ``python -m
device_updater.validation._worker``; reads one JSON request on stdin.

``{"mode": "run", "format", "model", "inputs": PATH(.npy|.npz), "outputs": PATH.npz,
"options": {...}}`` runs every sample one at a time (batch 1, as a device does) and writes each
model output stacked over the samples to ``outputs`` (``o0``, ``o1``, ... in the model's output
order). It prints one JSON line: ``latencies_ms`` (``invoke`` only), ``runtime``, ``signature``
(inputs and outputs: name, dtype, shape with -1 for dynamic dims, quantization) and ``memory``
(peak RSS of this process and its peak over the baseline taken after the runtime was imported
and the inputs loaded: what loading and running the model cost).

``{"mode": "abab", "models": [{"format", "model"}, {"format", "model"}], "inputs", "outputs",
"options": {"budget_s", "min_pairs", "max_pairs", "target_rel_halfwidth", "warmup"}}`` loads
both models in this one process, warms both up, then times their ``invoke`` interleaved
(A B, B A, A B, ...) on the same samples until the ratio's confidence interval is narrow or the
budget is spent, and writes ``a_ms``/``b_ms`` (paired) to ``outputs``.

Inputs are never cast or reshaped: a holdout array must have the model input's dtype and shape
(dynamic dims allowed). The one conversion is the model's own declared quantization: a float
holdout feeding an int8/uint8 input with a (scale, zero point) is quantized with them, and such
outputs are dequantized; both happen outside the timed region.

Exit status: 0 done, 3 runtime not installed, 4 the holdout or outputs break the model's I/O
contract, 5 the memory budget was exceeded, 1 any other failure (message on stderr).
"""

from __future__ import annotations

import gc
import json
import math
import resource
import sys
import time
from typing import Any

import numpy as np

EXIT_NOT_INSTALLED = 3
EXIT_CONTRACT = 4
EXIT_MEMORY = 5


from device_updater.validation._worker_spec import (  # noqa: E402
    ContractError,
    Model,
    NotInstalled,
    Spec,
    _spec,
)


def _dequantize(y: np.ndarray, spec: Spec) -> np.ndarray:
    q = spec["quantization"]
    if q is None:
        return y
    return np.asarray((y.astype(np.float32) - q[1]) * q[0], dtype=np.float32)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


class OnnxModel:
    def __init__(self, path: str, options: dict[str, Any]) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise NotInstalled(f"onnxruntime is not installed: {exc}") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(options.get("threads", 1))
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, sess_options=so,
                                         providers=["CPUExecutionProvider"])

        def specs(items: Any) -> list[Spec]:
            out = []
            for t in items:
                if t.type not in _ORT_TYPES:
                    raise ContractError(f"tensor {t.name!r} has type {t.type}, which the gate "
                                        "cannot feed or score")
                out.append(_spec(t.name, _ORT_TYPES[t.type], t.shape))
            return out

        self.inputs, self.outputs = specs(self.sess.get_inputs()), specs(self.sess.get_outputs())
        self.runtime = f"onnxruntime {ort.__version__}"
        # IOBinding: inputs are bound before the clock starts, outputs copied after it stops.
        self.binding = self.sess.io_binding()
        for o in self.outputs:
            self.binding.bind_output(o["name"])
        self._feed: list[np.ndarray] = []

    def set_inputs(self, feed: list[np.ndarray]) -> None:
        self._feed = [np.ascontiguousarray(x) for x in feed]
        for spec, x in zip(self.inputs, self._feed, strict=True):
            self.binding.bind_cpu_input(spec["name"], x)

    def invoke(self) -> None:
        self.sess.run_with_iobinding(self.binding)

    def get_outputs(self) -> list[np.ndarray]:
        return [np.asarray(v) for v in self.binding.copy_outputs_to_cpu()]


class LiteRtModel:
    def __init__(self, path: str, options: dict[str, Any], delegate: str | None = None) -> None:
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
        self.it = litert.Interpreter(model_path=path, num_threads=int(options.get("threads", 1)),
                                     experimental_delegates=delegates or None)
        self._in = self.it.get_input_details()
        self._out = self.it.get_output_details()

        def spec(d: dict[str, Any]) -> Spec:
            sig = d.get("shape_signature")
            shape = sig if sig is not None and len(sig) else d["shape"]
            scale, zp = d.get("quantization") or (0.0, 0)
            return _spec(d["name"], d["dtype"], shape, scale, zp)

        self.inputs = [spec(d) for d in self._in]
        self.outputs = [spec(d) for d in self._out]
        version = getattr(litert, "__version__", "") or _dist_version("ai-edge-litert")
        self.runtime = f"litert {version}".strip()
        self._allocated = False

    def set_inputs(self, feed: list[np.ndarray]) -> None:
        if not self._allocated:
            for d, x in zip(self._in, feed, strict=True):
                if list(d["shape"]) != list(x.shape):
                    self.it.resize_tensor_input(d["index"], list(x.shape))
            self.it.allocate_tensors()
            self._allocated = True
        for d, x in zip(self._in, feed, strict=True):
            self.it.set_tensor(d["index"], x)

    def invoke(self) -> None:
        self.it.invoke()

    def get_outputs(self) -> list[np.ndarray]:
        return [np.array(self.it.get_tensor(d["index"])) for d in self._out]


def _tflite_io_names(path: str) -> tuple[list[str], list[str]]:
    """Tensor names of subgraph 0 (TFLM's Python interpreter reports none)."""
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s
    except ImportError:
        from ai_edge_litert import schema_py_generated as s
    with open(path, "rb") as fh:
        m = s.Model.GetRootAs(fh.read(), 0)
    g = m.Subgraphs(0)

    def name(i: int) -> str:
        raw = g.Tensors(i).Name()
        return raw.decode("utf-8", "replace") if raw else f"tensor{i}"

    return ([name(g.Inputs(i)) for i in range(g.InputsLength())],
            [name(g.Outputs(i)) for i in range(g.OutputsLength())])


class TflmModel:
    def __init__(self, path: str, options: dict[str, Any]) -> None:
        try:
            from tflite_micro.python.tflite_micro import runtime
        except ImportError as exc:
            raise NotInstalled(f"tflite-micro is not installed: {exc}") from None
        arena = options.get("arena_size")
        self.it = runtime.Interpreter.from_file(path, arena_size=int(arena) if arena else None)
        in_names, out_names = _tflite_io_names(path)

        def spec(name: str, d: dict[str, Any]) -> Spec:
            q = d.get("quantization_parameters") or {}
            scales, zps = list(q.get("scales", [])), list(q.get("zero_points", []))
            return _spec(name, d["dtype"], d["shape"], float(scales[0]) if scales else 0.0,
                         int(zps[0]) if zps else 0)

        self.inputs = [spec(n, self.it.get_input_details(i)) for i, n in enumerate(in_names)]
        self.outputs = [spec(n, self.it.get_output_details(i)) for i, n in enumerate(out_names)]
        self.runtime = f"tflite-micro {_dist_version('tflite-micro')}".strip()

    def set_inputs(self, feed: list[np.ndarray]) -> None:
        for i, x in enumerate(feed):
            self.it.set_input(x, i)

    def invoke(self) -> None:
        self.it.invoke()

    def get_outputs(self) -> list[np.ndarray]:
        return [np.array(self.it.get_output(i)) for i in range(len(self.outputs))]


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return ""


def load(fmt: str, model: str, options: dict[str, Any]) -> Model:
    if fmt == "onnx":
        return OnnxModel(model, options)
    if fmt == "tflite":
        return LiteRtModel(model, options)
    if fmt == "edgetpu":
        return LiteRtModel(model, options, str(options.get("delegate", "libedgetpu.so.1")))
    if fmt == "tflm":
        return TflmModel(model, options)
    if fmt == "tensorrt":
        from device_updater.validation._worker_trt import TensorRtModel

        return TensorRtModel(model, options)
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


# --- feeding the holdout: check, never cast ------------------------------------------------------


def load_inputs(path: str) -> dict[str, np.ndarray]:
    """``{"": array}`` for an unnamed ``.npy``, ``{name: array}`` for an ``.npz``."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return {"": np.load(path, allow_pickle=False)}


def _shape_ok(want: list[int], got: tuple[int, ...]) -> bool:
    return len(want) == len(got) and all(w in (-1, g) for w, g in zip(want, got, strict=True))


def prepare(model: Model, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Holdout arrays in the model's input order, quantized if the model declares it."""
    names = [s["name"] for s in model.inputs]
    if set(arrays) == {""}:
        if len(names) != 1:
            raise ContractError(f"the model has {len(names)} inputs {names}; give the holdout "
                                "as inputs.npz with one array per input name")
        arrays = {names[0]: arrays[""]}
    if set(arrays) != set(names):
        raise ContractError(f"holdout inputs {sorted(arrays)} do not match the model's input "
                            f"names {sorted(names)}")
    out = []
    for spec in model.inputs:
        x = arrays[spec["name"]]
        want = np.dtype(spec["dtype"])
        if x.dtype != want:
            q = spec["quantization"]
            if q is None or x.dtype.kind != "f":
                raise ContractError(f"input {spec['name']!r}: holdout is {x.dtype}, the model "
                                    f"takes {want}; the gate never casts: store the holdout "
                                    f"as {want}")
            info = np.iinfo(want.name)
            x = np.clip(np.round(x / q[0] + q[1]), info.min, info.max).astype(want)
        if not _shape_ok(spec["shape"], (1, *x.shape[1:])):
            raise ContractError(f"input {spec['name']!r}: a holdout sample has shape "
                                f"{[1, *x.shape[1:]]}, the model takes {spec['shape']} (-1 = "
                                "any); the gate never reshapes")
        out.append(np.ascontiguousarray(x))
    return out


# --- memory ------------------------------------------------------------------------------------


def _status(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> None:
    try:  # Linux >= 4.0: "5" resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _set_memory_limit(options: dict[str, Any]) -> None:
    limit = options.get("memory_limit_bytes")
    budget = options.get("memory_budget_bytes")
    if budget:
        # The budget is about what the model adds; address space runs ahead of RSS (runtime
        # arenas, thread stacks), so allow twice the budget plus slack over what exists now.
        vm = _status("VmSize")
        mine = vm + 2 * int(budget) + (256 << 20)
        limit = min(int(limit), mine) if limit else mine
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, MemoryError) or any(
        s in text for s in ("bad_alloc", "failed to allocate", "out of memory",
                            "cannot allocate memory", "std::length_error"))


# --- modes ---------------------------------------------------------------------------------------


def _stack(name: str, ys: list[np.ndarray]) -> np.ndarray:
    shapes = {y.shape for y in ys}
    if len(shapes) > 1:
        raise ContractError(f"output {name!r} changes shape between samples ({sorted(shapes)}); "
                            "the gate cannot score it")
    if ys and ys[0].ndim >= 1 and ys[0].shape[0] == 1:
        return np.concatenate(ys, axis=0)
    return np.stack(ys, axis=0)


def run_mode(req: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    fmt = str(req["format"])
    arrays = load_inputs(str(req["inputs"]))
    _preimport(fmt)  # import the runtime first: a memory limit must not look like "missing"
    gc.collect()
    _reset_peak()
    baseline = _status("VmRSS")
    _set_memory_limit(options)
    model = load(fmt, str(req["model"]), options)
    feed = prepare(model, arrays)
    n = feed[0].shape[0] if feed else 0
    per_out: list[list[np.ndarray]] = [[] for _ in model.outputs]
    lat = []
    for i in range(n):
        model.set_inputs([x[i : i + 1] for x in feed])
        t0 = time.perf_counter()
        model.invoke()
        lat.append((time.perf_counter() - t0) * 1000.0)
        for j, y in enumerate(model.get_outputs()):
            per_out[j].append(_dequantize(np.asarray(y), model.outputs[j]))
    peak = _status("VmHWM")
    stacked = {f"o{j}": _stack(model.outputs[j]["name"], ys) for j, ys in enumerate(per_out)}
    np.savez(str(req["outputs"]), **stacked)  # type: ignore[arg-type]  # numpy stub: kwargs
    return {"latencies_ms": lat, "runtime": model.runtime,
            "signature": {"inputs": model.inputs, "outputs": model.outputs},
            "memory": {"peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
                       "peak_over_baseline_bytes": max(peak - baseline, 0)}}


def _median_log_ratio_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median of paired log(a/b) with a distribution-free 95% CI (binomial order statistics)."""
    d = sorted(math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0 and y > 0)
    n = len(d)
    if n == 0:
        return 0.0, -math.inf, math.inf
    k = max(math.floor(n / 2 - 1.96 * math.sqrt(n) / 2), 0)
    return d[n // 2], d[k], d[min(n - 1 - k, n - 1)]


def abab_mode(req: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    arrays = load_inputs(str(req["inputs"]))
    specs = req["models"]
    for s in specs:
        _preimport(str(s["format"]))
    _set_memory_limit({"memory_limit_bytes": options.get("memory_limit_bytes")})
    models = [load(str(s["format"]), str(s["model"]), options) for s in specs]
    cap = int(options.get("max_samples", 64))
    feeds = [[x[:cap] for x in prepare(m, arrays)] for m in models]
    n = feeds[0][0].shape[0]
    budget = float(options.get("budget_s", 3.0))
    min_pairs = int(options.get("min_pairs", 200))
    max_pairs = int(options.get("max_pairs", 20000))
    target = float(options.get("target_rel_halfwidth", 0.03))
    clock = time.perf_counter

    def timed(m: Model, feed: list[np.ndarray], i: int) -> float:
        m.set_inputs([x[i : i + 1] for x in feed])
        t0 = clock()
        m.invoke()
        return (clock() - t0) * 1000.0

    for w in range(int(options.get("warmup", 20))):  # caches, lazy allocations, JIT-ish paths
        for m, feed in zip(models, feeds, strict=True):
            timed(m, feed, w % n)
    a_ms: list[float] = []
    b_ms: list[float] = []
    start = clock()
    stop_reason = "max_pairs"
    while len(a_ms) < max_pairs:
        i = len(a_ms) % n
        if len(a_ms) % 2 == 0:  # A B, then B A: neither model always runs on a warm cache
            a = timed(models[0], feeds[0], i)
            b = timed(models[1], feeds[1], i)
        else:
            b = timed(models[1], feeds[1], i)
            a = timed(models[0], feeds[0], i)
        a_ms.append(a)
        b_ms.append(b)
        if len(a_ms) % 50 == 0 and len(a_ms) >= min_pairs:
            med, lo, hi = _median_log_ratio_ci(a_ms, b_ms)
            if (math.exp(hi) - math.exp(lo)) / 2 <= target * math.exp(med):
                stop_reason = "ci_narrow"
                break
        if clock() - start > budget and len(a_ms) >= 20:
            stop_reason = "budget"
            break
    np.savez(str(req["outputs"]), a_ms=np.asarray(a_ms), b_ms=np.asarray(b_ms))
    return {"pairs": len(a_ms), "stop": stop_reason, "runtime": models[0].runtime}


def main() -> int:
    try:
        req = json.loads(sys.stdin.read(1 << 16))
        options = dict(req.get("options") or {})
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        mode = req.get("mode", "run")
        result = abab_mode(req, options) if mode == "abab" else run_mode(req, options)
        print(json.dumps(result))
        return 0
    except NotInstalled as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_NOT_INSTALLED
    except ContractError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONTRACT
    except Exception as exc:
        if _is_oom(exc):
            print(f"ran out of memory: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
            return EXIT_MEMORY
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
