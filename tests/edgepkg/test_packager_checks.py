"""Packager checks (issue 10 item 9): short tensor buffers refused; ``--check-load``."""

from __future__ import annotations

import struct

import pytest

from edgepkg.cli import main as cli_main
from edgepkg.errors import FormatError, UsageError
from edgepkg.formats import build, detect
from edgepkg.formats._fbreader import Buf
from edgepkg.formats.loadcheck import check_load
from fuzz import _seeds


def _shorten_largest_buffer(model: bytes, by: int) -> bytes:
    """The same flatbuffer with the largest constant buffer's length field reduced by ``by``."""
    buffers = list(Buf(model).root().tables(4))
    vectors = [b._vector(0, 1) for b in buffers]
    start, n = max((v for v in vectors if v is not None), key=lambda v: v[1])
    out = bytearray(model)
    struct.pack_into("<I", out, start - 4, n - by)
    return bytes(out)


@pytest.fixture
def tflite_model() -> bytes:
    return build.tflite_mlp_classifier(_seeds.mlp_weights())


def test_tflite_with_a_buffer_shorter_than_its_tensor_is_refused(tmp_path, tflite_model):
    p = tmp_path / "short.tflite"
    p.write_bytes(_shorten_largest_buffer(tflite_model, 4))
    with pytest.raises(FormatError, match=r"needs \d+ bytes .* holds only \d+"):
        detect(p)


def test_tflm_c_array_with_a_short_buffer_is_refused(tmp_path, tflite_model):
    p = tmp_path / "short.cc"
    p.write_text(build.tflm_c_array(_shorten_largest_buffer(tflite_model, 1), "g_model"))
    with pytest.raises(FormatError, match="read past the buffer"):
        detect(p)
    flat = tmp_path / "short.tflite"
    flat.write_bytes(_shorten_largest_buffer(tflite_model, 1))
    with pytest.raises(FormatError, match="read past the buffer"):
        detect(flat, format="tflm")


def test_well_formed_models_pass_the_buffer_check(tmp_path, tflite_model):
    w = _seeds.mlp_weights()
    int8 = build.tflite_mlp_classifier(w, int8=True, calibration=__import__("numpy").ones((4, 4)))
    for name, data in (("f.tflite", tflite_model), ("q.tflite", int8)):
        (tmp_path / name).write_bytes(data)
        assert detect(tmp_path / name).format == "tflite"


# --- --check-load ----------------------------------------------------------------------------


def test_check_load_accepts_models_each_runtime_loads(tmp_path, tflite_model):
    (tmp_path / "m.onnx").write_bytes(build.onnx_mlp_classifier(_seeds.mlp_weights()))
    (tmp_path / "m.tflite").write_bytes(tflite_model)
    (tmp_path / "m.cc").write_text(build.tflm_c_array(tflite_model, "g_model", style="tflm"))
    assert check_load(tmp_path / "m.onnx") == "onnx"
    assert check_load(tmp_path / "m.tflite") == "tflite"
    assert check_load(tmp_path / "m.cc") == "tflm"


def _onnx_with_unknown_op() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOperator", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_check_load_refuses_a_model_the_runtime_cannot_load(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(_onnx_with_unknown_op())
    assert detect(p).format == "onnx"  # parsing alone accepts it
    with pytest.raises(FormatError, match=r"onnxruntime cannot load .*NoSuchOperator"):
        check_load(p)


def test_check_load_names_the_missing_runtime(tmp_path, monkeypatch):
    fake = tmp_path / "site"
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text("raise ImportError('not here')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    p = tmp_path / "m.onnx"
    p.write_bytes(build.onnx_mlp_classifier(_seeds.mlp_weights()))
    with pytest.raises(UsageError, match="pip install onnxruntime"):
        check_load(p)


def test_check_load_of_a_format_without_a_local_runtime_is_a_usage_error(tmp_path):
    p = tmp_path / "m.engine"
    p.write_bytes(build.tensorrt_header(10, 3, 0))
    with pytest.raises(UsageError, match="cannot load a tensorrt model"):
        check_load(p, requirements={"gpu_sm": 87})


def test_package_check_load_flag_refuses_before_writing_a_bundle(tmp_path, capsys):
    p = tmp_path / "bad.onnx"
    p.write_bytes(_onnx_with_unknown_op())
    out = tmp_path / "b.epkg"
    rc = cli_main(["package", str(p), "--name", "m", "--version", "1.0.0",
                   "--sign-key", str(tmp_path / "absent.key"), "--recipient",
                   str(tmp_path / "absent.pub"), "-o", str(out), "--check-load"])
    assert rc == 1
    assert "cannot load" in capsys.readouterr().err
    assert not out.exists()
