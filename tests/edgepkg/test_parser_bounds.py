"""Every untrusted parser is bounded (issue 13 item 6): typed errors, linear work.

Each test reproduces one finding of the issue-13 attack campaign. Time bounds are generous
(the findings took seconds to minutes; fixed code takes milliseconds).
"""

from __future__ import annotations

import hashlib
import io
import struct
import time
from pathlib import Path

import pytest

from edgepkg._json import MAX_INT_DIGITS, loads_bounded
from edgepkg.bundle import read_bundle_info
from edgepkg.bundle._container import Signature, encode_header
from edgepkg.bundle._manifest import Manifest
from edgepkg.cli import main as cli_main
from edgepkg.delta import _bsdiff, _zwindow, apply_delta
from edgepkg.delta._io import BoundedWriter, OldFile
from edgepkg.errors import BundleError, DeltaError, FormatError, TamperedError, TooLargeError
from edgepkg.formats import _carray, build, detect
from fuzz import _seeds


class _Clock:
    def __init__(self, limit: float) -> None:
        self.limit = limit

    def __enter__(self) -> _Clock:
        self.t = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        took = time.monotonic() - self.t
        assert took < self.limit, f"took {took:.2f} s (bound {self.limit} s)"


# --- bounded JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, reason", [
    (b"[" * 100_000 + b"]" * 100_000, "nesting"),
    (b'{"a": ' + b"9" * 5000 + b"}", "digits"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": -Infinity}', "Infinity"),
    (b'{"a": 1e999}', "out of range"),
    (b'{"a": "\\ud800"}', "surrogate"),
    (b'{"\\udfff": 1}', "surrogate"),
    (b'\xff{}', "UTF-8"),
])
def test_bounded_json_refuses_hostile_documents_with_the_callers_error(raw, reason):
    with pytest.raises(BundleError, match=reason):
        loads_bounded(raw, what="manifest", error=BundleError)


def test_bounded_json_depth_scan_is_linear_on_unterminated_escaped_quotes():
    with _Clock(2.0), pytest.raises(BundleError):
        loads_bounded(b'"' + b'\\"' * 400_000, what="x", error=BundleError, max_bytes=1 << 21)


def test_bounded_json_accepts_ordinary_documents_and_brackets_inside_strings():
    doc = {"a": [1, -2, 3.5, "x]]}{[", {"b": None}], "n": 10 ** (MAX_INT_DIGITS - 1)}
    import json
    assert loads_bounded(json.dumps(doc), what="x", error=BundleError) == doc


def test_bounded_json_size_limit_is_too_large_error():
    with pytest.raises(TooLargeError):
        loads_bounded(b"[]" + b" " * 100, what="x", error=BundleError, max_bytes=10)


# --- manifest and bundle header (read before verification by inspect/unpack) ----------------


def _bundle_with_manifest(tmp_path: Path, manifest: bytes) -> Path:
    sig = Signature(alg="ed25519", keyid="ef" * 32, sig=bytes(64))
    p = tmp_path / "hostile.epkg"
    p.write_bytes(encode_header(manifest, sig, {"cd" * 32: bytes(65 + 32 + 16)}, 0))
    return p


@pytest.mark.parametrize("manifest", [
    b'{"name":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"plaintext_length":' + b"7" * 5000 + b"}",
])
def test_inspect_of_manifest_bomb_is_a_bundle_error_not_a_crash(tmp_path, manifest, capsys):
    bundle = _bundle_with_manifest(tmp_path, manifest)
    with pytest.raises(BundleError):
        read_bundle_info(bundle)
    assert cli_main(["inspect", str(bundle)]) == 1
    assert "manifest is not valid JSON" in capsys.readouterr().err


def test_manifest_from_json_refuses_nan_in_policy():
    raw = _seeds.manifest_bytes().replace(b'"min":0.7', b'"min":NaN')
    with pytest.raises(BundleError, match="NaN"):
        Manifest.from_json(raw)


def test_signature_block_with_deep_nesting_is_tampered():
    with pytest.raises(TamperedError):
        Signature.from_block(b"[" * 4000)


# --- TensorRT metadata -----------------------------------------------------------------------


def test_tensorrt_metadata_deep_nesting_is_a_format_error(tmp_path):
    meta = b"[" * 200_000 + b"]" * 200_000
    engine = build.tensorrt_header(10, 3, 0, size=256)
    p = tmp_path / "m.engine"
    p.write_bytes(struct.pack("<i", len(meta)) + meta + engine)
    with pytest.raises(FormatError, match="Ultralytics metadata"):
        detect(p, extra_requirements={"gpu_sm": 87})


# --- C arrays --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "/*" * 150_000,                      # unterminated block comments: was > 60 s
    "/*//\n" * 60_000,
    "int kTensorArenaSize = 1 " * 12_000,  # arena constants without ';'
])
def test_c_array_scan_is_linear_on_hostile_sources(text):
    with _Clock(2.0):
        assert _carray.parse_c_arrays(text) == []
        assert _carray.declared_arena_size(text) is None


def test_comment_stripping_keeps_semantics():
    src = "a /* b */ c // d\ne /* f"
    assert _carray.strip_comments(src) == "a   c  \ne /* f"
    tfl = build.tflite_mlp_classifier(_seeds.mlp_weights())
    text = "/* header */\n" + build.tflm_c_array(tfl, "g_model", style="tflm", arena_size=4096)
    (arr,) = _carray.parse_c_arrays(text)
    assert arr.data == tfl and _carray.declared_arena_size(text) == 4096


# --- TFLite shared tables --------------------------------------------------------------------


def test_tflite_shared_subgraph_and_operator_tables_cost_one_parse(tmp_path):
    # 4,096 subgraph references x 20,000 operator references to one edgetpu op: was > 60 s
    p = tmp_path / "shared.tflite"
    p.write_bytes(_seeds.shared_table_tflite(4096, 20_000))
    with _Clock(2.0), pytest.raises(FormatError, match="more than 2000000 operators"):
        detect(p)


def test_tflite_shared_tables_still_count_every_reference(tmp_path):
    p = tmp_path / "shared.tflite"
    p.write_bytes(_seeds.shared_table_tflite(100, 100))
    info = detect(p)
    assert info.format == "edgetpu"
    assert info.details["operators"] == 10_000
    assert info.details["edgetpu_ops"] == 10_000


# --- bsdiff ----------------------------------------------------------------------------------


def _apply_bsdiff(body: bytes, new_size: int, old: bytes = bytes(64)) -> bytes:
    sink = io.BytesIO()
    _bsdiff.apply(OldFile(io.BytesIO(old), len(old)), io.BytesIO(body), 0, len(body),
                  BoundedWriter(sink, new_size))
    return sink.getvalue()


def test_bsdiff_control_bomb_is_refused_quickly():
    # 1,000 empty entries between 1-byte entries, 2 KiB out: a ~300-byte patch took 3.9 s
    entries = ([(0, 0, 0)] * 1000 + [(0, 1, 0)]) * 2048
    body = _seeds.bsdiff_body(entries, 2048, bytes(2048))
    assert len(body) < 2000
    with _Clock(2.0), pytest.raises(DeltaError, match=r"makes no progress|more than"):
        _apply_bsdiff(body, 2048)


def test_bsdiff_one_byte_entries_are_bounded_per_output_byte():
    n = 64 * 1024
    body = _seeds.bsdiff_body([(0, 1, 0)] * n, n, bytes(n))
    bound = _bsdiff.max_control_entries(n)
    with _Clock(2.0), pytest.raises(DeltaError, match=f"more than {bound} entries"):
        _apply_bsdiff(body, n)


def test_bsdiff_within_bounds_still_rebuilds():
    entries = [(4, 0, 0)] * 8 + [(0, 1, 0)] * 100
    out = _apply_bsdiff(_seeds.bsdiff_body(entries, 132, b"\x01" * 100), 132, b"\x07" * 64)
    assert out == b"\x07" * 32 + b"\x01" * 100


# --- zstd-window -----------------------------------------------------------------------------


def _zw_segment(n: int, lo: int, dlen: int, data: bytes | None = None) -> bytes:
    import zstandard as zstd

    frame = zstd.ZstdCompressor().compress(data if data is not None else bytes(n))
    return struct.pack(">IQII", n, lo, dlen, len(frame)) + frame


def test_zwindow_refuses_a_segment_after_a_short_one():
    old = bytes(4 << 20)
    stream = io.BytesIO(_zw_segment(1, 0, 1 << 20) + _zw_segment(1, 0, 1 << 20) + bytes(4))
    with pytest.raises(DeltaError, match="follows a short one"):
        _zwindow.apply(OldFile(io.BytesIO(old), len(old)), stream, BoundedWriter(io.BytesIO(), 2))


def test_zwindow_refuses_a_dictionary_larger_than_segment_plus_margins():
    old = bytes(16 << 20)
    stream = io.BytesIO(_zw_segment(1, 0, 8 << 20) + bytes(4))
    with pytest.raises(DeltaError, match="segment header is invalid"):
        _zwindow.apply(OldFile(io.BytesIO(old), len(old)), stream, BoundedWriter(io.BytesIO(), 1))


def test_zwindow_deltas_made_by_the_encoder_still_apply(tmp_path):
    from edgepkg.delta import make_delta

    old = bytes(range(256)) * 40_000  # > 2 segments
    new = old[5000:] + b"tail" * 1000
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    make_delta(tmp_path / "old", tmp_path / "new", tmp_path / "d", methods=["zstd-window"],
               verify=False)
    apply_delta(tmp_path / "old", tmp_path / "d", tmp_path / "out",
                expected_sha256=hashlib.sha256(new).hexdigest(), expected_length=len(new))
    assert (tmp_path / "out").read_bytes() == new
