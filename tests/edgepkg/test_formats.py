"""Model format detection: real files per format, requirement extraction, refusals, hostile
input."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from edgepkg import errors
from edgepkg.formats import (
    MAX_C_SOURCE_BYTES,
    MAX_PARSE_BYTES,
    ModelInfo,
    build,
    detect,
    extract_model_bytes,
    prepare_payload,
)
from tests.fixtures.models import (
    EDGETPU_COMPILER,
    EDGETPU_RUNTIME,
    TFLM_ARENA_SIZE,
    ULTRALYTICS_METADATA,
    run_tflm_sine,
)

# --- detection and requirements per format ---------------------------------------------------


def test_onnx_classifier_reports_ir_version_and_opset(onnx_model_path: Path) -> None:
    info = detect(onnx_model_path)
    assert info.format == "onnx"
    assert info.requirements == {"onnx_ir_version": 9, "onnx_opset": 17,
                                 "onnx_opsets": ["ai.onnx=17"]}
    assert info.details["producer_name"] == "edgepkg"
    assert info.details["ops"] == ["Gemm", "Relu", "Softmax"]
    assert info.details["inputs"][0]["shape"] == ["N", 8]


def test_float_tflite_lists_builtin_ops_and_min_runtime(tflite_float_path: Path) -> None:
    info = detect(tflite_float_path)
    assert info.format == "tflite"
    assert info.requirements == {
        "tflite_ops": ["FULLY_CONNECTED:1", "RELU:1", "SOFTMAX:1"], "tflite_runtime": "1.5.0"}
    assert info.details["inputs"][0]["dtype"] == "FLOAT32"
    assert info.details["operators"] == 4


def test_int8_tflite_records_op_versions_and_input_quantization(tflite_int8_path: Path) -> None:
    info = detect(tflite_int8_path)
    assert info.format == "tflite"
    assert info.requirements["tflite_ops"] == ["FULLY_CONNECTED:4", "RELU:2", "SOFTMAX:2"]
    inp = info.details["inputs"][0]
    assert inp["dtype"] == "INT8" and inp["quantization"]["scale"] > 0
    assert info.details["outputs"][0]["quantization"] == {"scale": 1 / 256, "zero_point": -128}


def test_real_sine_model_from_tflite_micro_wheel(sine_tflite_path: Path) -> None:
    info = detect(sine_tflite_path)
    assert info.format == "tflite"
    assert info.requirements == {"tflite_ops": ["FULLY_CONNECTED:1"], "tflite_runtime": "1.5.0"}
    assert info.details["description"] == "MLIR Converted."
    assert info.details["opcodes"][0]["count"] == 3


def test_plain_flatbuffer_forced_to_tflm_gets_micro_requirements(sine_tflite_path: Path) -> None:
    info = detect(sine_tflite_path, format="tflm", extra_requirements={"arena_size": "2048"})
    assert info.format == "tflm"
    assert info.requirements == {"tflm_ops": ["FULLY_CONNECTED"], "alignment": 16,
                                 "arena_size": 2048}
    assert prepare_payload(sine_tflite_path, info, sine_tflite_path.parent) == sine_tflite_path


def test_tflm_c_array_extracts_exact_bytes_alignment_and_arena(
    tflm_c_array_path: Path, sine_tflite_path: Path, tmp_path: Path
) -> None:
    info = detect(tflm_c_array_path)
    original = sine_tflite_path.read_bytes()
    assert info.format == "tflm"
    assert info.requirements == {"tflm_ops": ["FULLY_CONNECTED"], "alignment": 16,
                                 "arena_size": TFLM_ARENA_SIZE}
    assert info.details["array_name"] == "g_sine_model_data"
    assert info.details["declared_alignment"] == 16
    assert info.details["payload_sha256"] == hashlib.sha256(original).hexdigest()
    payload = prepare_payload(tflm_c_array_path, info, tmp_path)
    assert payload.parent == tmp_path and payload.read_bytes() == original
    # The extracted model is the real one: TFLite Micro still computes sin(x).
    xs = [0.5, 2.0]
    assert np.allclose(run_tflm_sine(payload.read_bytes(), xs), np.sin(xs), atol=0.05)


def test_xxd_style_array_without_alignas_still_requires_16_byte_alignment(
    tflm_xxd_path: Path, sine_tflite_path: Path
) -> None:
    info = detect(tflm_xxd_path)
    assert info.format == "tflm"
    assert info.details["declared_alignment"] is None
    assert info.requirements["alignment"] == 16 and "arena_size" not in info.requirements
    assert extract_model_bytes(tflm_xxd_path, info) == sine_tflite_path.read_bytes()


def test_edgetpu_model_reports_runtime_compiler_and_op_count(edgetpu_model_path: Path) -> None:
    info = detect(edgetpu_model_path)
    assert info.format == "edgetpu"
    assert info.requirements["edgetpu_runtime"] == EDGETPU_RUNTIME
    assert info.details["compiler_version"] == EDGETPU_COMPILER
    assert info.details["edgetpu_ops"] == 2
    assert info.requirements["tflite_ops"] == ["custom:edgetpu-custom-op:1"]


def test_tensorrt_engine_version_from_header_and_sm_from_operator(
    tensorrt_engine_path: Path,
) -> None:
    info = detect(tensorrt_engine_path, extra_requirements={"gpu_sm": "sm_87"})
    assert info.format == "tensorrt"
    assert info.requirements == {"tensorrt": "10.3.0", "gpu_sm": 87}
    assert info.details["engine_offset"] == 0
    assert detect(tensorrt_engine_path, extra_requirements={"gpu_sm": "8.9"}).requirements[
        "gpu_sm"] == 89


def test_ultralytics_prefixed_engine_is_tensorrt_with_metadata(
    tensorrt_ultralytics_path: Path,
) -> None:
    info = detect(tensorrt_ultralytics_path, extra_requirements={"gpu_sm": 87})
    assert info.format == "tensorrt"
    assert info.requirements["tensorrt"] == "8.6.1"
    assert info.details["ultralytics_metadata"] == ULTRALYTICS_METADATA
    assert info.details["engine_offset"] == 4 + len(json.dumps(ULTRALYTICS_METADATA))


def test_tensorrt_without_gpu_sm_asks_for_require_option(tensorrt_engine_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="--require gpu_sm="):
        detect(tensorrt_engine_path)


def test_large_engine_is_detected_from_a_bounded_prefix(tmp_path: Path) -> None:
    # 3 GiB sparse file: detection must not read it whole (it would take seconds and memory).
    path = tmp_path / "big.engine"
    with path.open("wb") as f:
        f.write(build.tensorrt_header(10, 3, 0, size=4096))
        f.truncate(3 << 30)
    info = detect(path, extra_requirements={"gpu_sm": "87"})
    assert info.requirements["tensorrt"] == "10.3.0" and info.details["size"] == 3 << 30


def test_require_contradicting_the_file_is_refused(tensorrt_engine_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="contradicts"):
        detect(tensorrt_engine_path, extra_requirements={"gpu_sm": "87", "tensorrt": "8.6.1"})


def test_extra_requirements_are_validated_and_merged(onnx_model_path: Path) -> None:
    info = detect(onnx_model_path, extra_requirements={"platform": "linux-aarch64"})
    assert info.requirements["platform"] == "linux-aarch64"
    with pytest.raises(errors.UsageError):
        detect(onnx_model_path, extra_requirements={"Bad Key": "x"})
    with pytest.raises(errors.UsageError):
        detect(onnx_model_path, extra_requirements={"gpu_sm": "eighty-seven"})


def test_model_info_is_frozen(onnx_model_path: Path) -> None:
    info = detect(onnx_model_path)
    with pytest.raises(AttributeError):
        info.format = "raw"  # type: ignore[misc]
    assert isinstance(info, ModelInfo)


# --- names do not matter, bytes do -----------------------------------------------------------


def test_tflite_bytes_named_onnx_are_detected_as_tflite(
    tflite_float_path: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "model.onnx"
    shutil.copyfile(tflite_float_path, fake)
    assert detect(fake).format == "tflite"


def test_onnx_bytes_named_engine_are_onnx(onnx_model_path: Path, tmp_path: Path) -> None:
    fake = tmp_path / "model.engine"
    shutil.copyfile(onnx_model_path, fake)
    assert detect(fake).format == "onnx"


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"hello world\n", os.urandom(4096), b"\x08\x07" * 10,
                                     b"PK\x03\x04" + b"\x00" * 100])
def test_unknown_bytes_are_refused_unless_raw(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    with pytest.raises(errors.FormatError, match="--format raw"):
        detect(path)
    info = detect(path, format="raw", extra_requirements={"platform": "x86_64"})
    assert info.format == "raw" and info.requirements == {"platform": "x86_64"}


@pytest.mark.parametrize(
    ("fixture", "forced"),
    [
        ("tflite_float_path", "onnx"),
        ("tflite_float_path", "tensorrt"),
        ("tflite_float_path", "edgetpu"),
        ("edgetpu_model_path", "tflite"),
        ("edgetpu_model_path", "tflm"),
        ("onnx_model_path", "tflite"),
        ("onnx_model_path", "tensorrt"),
        ("tensorrt_engine_path", "onnx"),
        ("tflm_c_array_path", "tflite"),
        ("tflm_c_array_path", "onnx"),
    ],
)
def test_forced_format_that_does_not_fit_is_refused(
    fixture: str, forced: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    with pytest.raises(errors.FormatError):
        detect(path, format=forced, extra_requirements={"gpu_sm": "87"})


def test_unknown_format_name_is_a_usage_error(onnx_model_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="unknown format"):
        detect(onnx_model_path, format="pytorch")


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="cannot read"):
        detect(tmp_path / "nope.onnx")


def test_onnx_with_external_data_is_refused(mlp, tmp_path: Path) -> None:
    import onnx

    weights, _, _ = mlp
    model = onnx.ModelProto.FromString(build.onnx_mlp_classifier(weights))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    with pytest.raises(errors.FormatError, match="external data"):
        detect(tmp_path / "ext.onnx")


def _sparse(path: Path, head: bytes, size: int) -> Path:
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def test_oversized_tflite_onnx_and_c_source_are_too_large(tmp_path: Path) -> None:
    big = MAX_PARSE_BYTES + 1
    with pytest.raises(errors.TooLargeError):
        detect(_sparse(tmp_path / "a.tflite", b"\x1c\x00\x00\x00TFL3", big))
    with pytest.raises(errors.TooLargeError):
        detect(_sparse(tmp_path / "a.onnx", b"\x08\x09\x12\x07pytorch", big))
    with pytest.raises(errors.TooLargeError):
        detect(_sparse(tmp_path / "b.onnx", b"\x00", big), format="onnx")
    head = b"unsigned char m[] = {0x1c};\n" + b" " * (70 << 10)
    with pytest.raises(errors.TooLargeError):
        detect(_sparse(tmp_path / "m.cc", head, MAX_C_SOURCE_BYTES + 1))


def test_tensorrt_header_truncated_or_implausible_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "e.engine"
    p.write_bytes(b"ftrt" + b"\x00" * 10)
    with pytest.raises(errors.FormatError, match="truncated"):
        detect(p, extra_requirements={"gpu_sm": "87"})
    p.write_bytes(b"ftrt" + b"\x00" * 40)
    with pytest.raises(errors.FormatError, match="implausible"):
        detect(p, extra_requirements={"gpu_sm": "87"})
    meta = b"{not json"
    p.write_bytes(struct.pack("<i", len(meta)) + meta + build.tensorrt_header(10, 3, 0))
    with pytest.raises(errors.FormatError, match="JSON"):
        detect(p, extra_requirements={"gpu_sm": "87"})


def test_edgetpu_op_with_garbage_options_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bad_edgetpu.tflite"
    p.write_bytes(build.edgetpu_model(custom_options=b"\xff" * 7))
    with pytest.raises(errors.FormatError, match=r"Edge TPU|FlexBuffer"):
        detect(p)
    from flatbuffers import flexbuffers

    no_dwn1 = bytes(flexbuffers.Dumps({"4": b"\x08\x00\x00\x00XXXX" + b"\x00" * 16}))
    p.write_bytes(build.edgetpu_model(custom_options=no_dwn1))
    with pytest.raises(errors.FormatError, match="DWN1"):
        detect(p)


def test_c_array_length_mismatch_is_refused(tflm_xxd_path: Path, tmp_path: Path) -> None:
    src = tflm_xxd_path.read_text().replace("_len = 3164", "_len = 3000")
    p = tmp_path / "m.h"
    p.write_text(src)
    with pytest.raises(errors.FormatError, match="3000"):
        detect(p)


def test_c_source_with_two_models_or_none_is_refused(
    sine_tflite_path: Path, tmp_path: Path
) -> None:
    model = sine_tflite_path.read_bytes()
    p = tmp_path / "two.cc"
    p.write_text(build.tflm_c_array(model, "a") + build.tflm_c_array(model, "b"))
    with pytest.raises(errors.FormatError, match="several model arrays"):
        detect(p)
    p.write_text(build.tflm_c_array(b"\x01\x02\x03\x04hello", "not_a_model"))
    with pytest.raises(errors.FormatError, match="no TFLite model array"):
        detect(p)
    p.write_text("unsigned char m[] = {0x1c, 0x00, 0x100};\n")
    with pytest.raises(errors.FormatError, match="outside a byte"):
        detect(p)


def test_arena_size_expression_is_read_without_eval(sine_tflite_path: Path,
                                                    tmp_path: Path) -> None:
    model = sine_tflite_path.read_bytes()
    p = tmp_path / "m.cc"
    p.write_text("#define TENSOR_ARENA_SIZE (10 * 1024)\n" + build.tflm_c_array(model, "m"))
    assert detect(p).requirements["arena_size"] == 10240
    p.write_text("const int kTensorArenaSize = __import__('os').getpid();\n"
                 + build.tflm_c_array(model, "m"))
    assert "arena_size" not in detect(p).requirements


def test_c_array_changed_after_detection_is_refused(tflm_c_array_path: Path,
                                                    tmp_path: Path) -> None:
    p = tmp_path / "m.cc"
    shutil.copyfile(tflm_c_array_path, p)
    info = detect(p)
    text = p.read_text()
    i = text.index("0x", text.index("{") + 6 * 2000)  # a weight byte deep in the model
    text = text[:i] + ("0x01" if text[i : i + 4] != "0x01" else "0x02") + text[i + 4 :]
    p.write_text(text)
    with pytest.raises(errors.FormatError, match="changed since"):
        prepare_payload(p, info, tmp_path)


def test_vendored_op_names_match_the_litert_schema() -> None:
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    from edgepkg.formats._tflite_enums import BUILTIN_OPERATORS

    for name, code in vars(schema.BuiltinOperator).items():
        if not name.startswith("_"):
            assert BUILTIN_OPERATORS[code] == name


# --- hostile input: mutations never escape as anything but an edgepkg error ------------------

_FUZZ_FIXTURES = ["onnx_model_path", "tflite_int8_path", "sine_tflite_path", "edgetpu_model_path",
                  "tflm_xxd_path", "tensorrt_ultralytics_path"]


@pytest.mark.parametrize("fixture", _FUZZ_FIXTURES)
def test_truncated_or_corrupted_models_raise_only_edgepkg_errors(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    original = request.getfixturevalue(fixture).read_bytes()
    rng = random.Random(fixture)
    target = tmp_path / "mutant"
    n = 300 if len(original) < 20_000 else 60
    for i in range(n):
        data = bytearray(original)
        kind = i % 4
        if kind == 0:
            data = data[: rng.randrange(len(data))]
        elif kind == 1:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 2:  # corrupt a 4-byte word, typical of offsets and lengths
            pos = rng.randrange(0, max(1, len(data) - 4)) & ~3
            data[pos : pos + 4] = struct.pack("<I", rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF,
                                                               rng.randrange(1 << 32)]))
        else:  # corrupt the first 256 bytes (root table, vtables, headers)
            pos = rng.randrange(min(256, len(data)))
            data[pos] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        try:
            detect(target, extra_requirements={"gpu_sm": "87"})
        except errors.Error:
            pass
        except Exception as exc:
            pytest.fail(f"mutation {i} ({kind=}) escaped as {type(exc).__name__}: {exc}")


def test_onnx_with_invalid_utf8_in_an_op_name_is_a_format_error(
    onnx_model_path: Path, tmp_path: Path
) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(onnx_model_path.read_bytes().replace(b"Gemm", b"G\xffmm"))
    with pytest.raises(errors.FormatError):
        detect(p)
    with pytest.raises(errors.FormatError):
        detect(p, format="onnx")
