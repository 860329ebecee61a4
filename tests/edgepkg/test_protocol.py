"""The device<->server contract: one signing string, one version order, strict parsers."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from edgepkg import protocol as p


def test_signing_string_is_the_documented_layout() -> None:
    body = b'{"a":1}'
    got = p.signing_string("post", "/api/v1/devices/x/checkin?y=1", 1700000000, "ab" * 16, body)
    want = "\n".join(["EDGEPKG-DEVICE-V1", "POST", "/api/v1/devices/x/checkin?y=1",
                      "1700000000", "ab" * 16, hashlib.sha256(body).hexdigest()])
    assert got == want.encode()
    # a string timestamp (as the server reads it from a header) signs the same bytes
    assert p.signing_string("POST", "/p", "1700000000", "n", b"") == \
        p.signing_string("POST", "/p", 1700000000, "n", b"")


def test_path_with_query_keeps_query_and_defaults_to_root() -> None:
    assert p.path_with_query("http://h:1/a/b?x=1&y=2") == "/a/b?x=1&y=2"
    assert p.path_with_query("http://h") == "/"


@pytest.mark.parametrize(
    ("lower", "higher"),
    [("1.0.0", "1.0.1"), ("1.0.0-rc.1", "1.0.0"), ("1.0.0-alpha", "1.0.0-alpha.1"),
     ("1.0.0-alpha.1", "1.0.0-alpha.beta"), ("1.0.0-beta.2", "1.0.0-beta.11"),
     ("1.9.0", "1.10.0"), ("2.0.0", "10.0.0")],
)
def test_versions_order_by_semver_precedence(lower: str, higher: str) -> None:
    assert p.Version.parse(lower) < p.Version.parse(higher)
    assert p.is_newer(higher, lower) and not p.is_newer(lower, higher)
    assert p.version_key(lower) < p.version_key(higher)


def test_build_metadata_is_ignored_in_order_but_kept_in_text() -> None:
    a, b = p.Version.parse("1.2.3+a"), p.Version.parse("1.2.3+b")
    assert a == b and str(a) == "1.2.3+a"


@pytest.mark.parametrize("bad", ["1.0", "01.0.0", "1.0.0-", "v1.0.0", "", "1.0.0-\ud800", "9" * 80])
def test_bad_versions_raise_a_typed_value_error(bad: str) -> None:
    with pytest.raises(p.InvalidVersionError) as info:
        p.Version.parse(bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, p.ProtocolError)
    assert not p.is_version(bad)


def test_target_names() -> None:
    assert p.full_target_name("cls", "2.0.0") == "models/cls/2.0.0/cls-2.0.0.edgepkg"
    assert (
        p.delta_target_name("cls", "2.0.0", "1.0.0") == "models/cls/2.0.0/delta-from-1.0.0.edgepkg"
    )
    with pytest.raises(p.ProtocolError):
        p.check_target_model("../etc")
    with pytest.raises(p.ProtocolError):
        p.check_target_version("1..0")


def test_assignment_round_trips_and_rejects_bad_shapes() -> None:
    a = p.Assignment(model="m", version="1.0.0", target="models/m/1.0.0/m-1.0.0.edgepkg",
                     rollout_id="r1")
    assert p.parse_assignment(a.to_json()) == a
    with pytest.raises(p.ProtocolError) as info:
        p.parse_assignment({**a.to_json(), "allow_downgrade": "yes"})
    assert info.value.field == "allow_downgrade"
    with pytest.raises(p.ProtocolError):
        p.parse_assignment({**a.to_json(), "action": "wipe"})
    resp = p.CheckinResponse(poll_interval=60, assignments=[a])
    assert p.parse_checkin_response(resp.to_json()) == resp
    with pytest.raises(p.ProtocolError):
        p.parse_checkin_response({"poll_interval": 0})
    with pytest.raises(p.ProtocolError):
        p.parse_checkin_response({"assignments": [a.to_json()] * 65})


def test_assignment_key_grants_are_optional_bounded_and_bound_to_its_targets() -> None:
    full, delta = "models/m/2.0.0/m-2.0.0.edgepkg", "models/m/2.0.0/m-2.0.0.from-1.0.0.edgepkg"
    plain = p.Assignment(model="m", version="2.0.0", target=full, delta_target=delta)
    # Old servers send no key_grants, old devices ignore it: absent means "no grants".
    assert "key_grants" not in plain.to_json()
    assert p.parse_assignment(plain.to_json()).key_grants == {}
    grant = {"format": "edgepkg-key-grant", "wrapped_key": "AAAA"}
    a = p.Assignment(model="m", version="2.0.0", target=full, delta_target=delta,
                     key_grants={full: grant, delta: grant})
    assert p.parse_assignment(a.to_json()) == a
    body = a.to_json()
    for bad, field in (
        ({"models/x/other.edgepkg": grant}, "key_grants"),  # not a target of this assignment
        ({full: "not an object"}, f"key_grants[{full!r}]"),
        ({full: {"pad": "x" * p.MAX_KEY_GRANT_BYTES}}, f"key_grants[{full!r}]"),
        ([grant], "key_grants"),
    ):
        with pytest.raises(p.ProtocolError) as info:
            p.parse_assignment({**body, "key_grants": bad})
        assert info.value.field == field
    no_delta = {**body, "delta_target": None}
    with pytest.raises(p.ProtocolError):
        p.parse_assignment(no_delta)  # the delta grant names a target the reply no longer has


def test_key_grant_bound_agrees_with_the_grant_parser() -> None:
    from edgepkg.grants import MAX_GRANT_BYTES

    assert p.MAX_KEY_GRANT_BYTES == MAX_GRANT_BYTES


def test_models_report_parsing() -> None:
    raw = {"m": {"active_slot": "a", "slots": {"a": {"version": "1.0.0", "sha256": "0" * 64},
                                               "b": None}}}
    models = p.parse_models_report(raw, limit=4)
    assert models["m"].active == p.SlotReport("1.0.0", "0" * 64)
    assert models["m"].to_json() == raw["m"]
    for bad in ({"m": {"active_slot": "c"}}, {"m": {"slots": {"c": None}}},
                {"m": {"slots": {"a": {"version": "1 0"}}}}, {"bad name": {}}):
        with pytest.raises(p.ProtocolError):
            p.parse_models_report(bad, limit=4)
    with pytest.raises(p.ProtocolError):
        p.parse_models_report({f"m{i}": {} for i in range(5)}, limit=4)


def test_event_parsing() -> None:
    ev = p.parse_event({"id": "12345678-1234-5678-1234-567812345678", "type": "committed",
                        "time": "2026-01-01T00:00:00Z", "details": {"x": 1}}, 0)
    assert ev.type == p.EventType.COMMITTED and ev.time.tzinfo is not None
    with pytest.raises(p.ProtocolError) as info:
        p.parse_event({"id": "12345678-1234-5678-1234-567812345678", "type": "rm -rf",
                       "time": "2026-01-01T00:00:00Z"}, 3)
    assert info.value.code == "bad_event_type" and info.value.field == "events[3].type"
    with pytest.raises(p.ProtocolError):  # overflows when converted to UTC
        p.parse_time("0001-01-01T00:00:00+01:00")


def test_event_types_are_the_lifecycle() -> None:
    assert set(p.EVENT_TYPES) >= p.SUCCESS_EVENTS | p.FAILURE_EVENTS
    assert len(p.EVENT_TYPES) == len(set(p.EVENT_TYPES)) == 9


def test_protocol_imports_no_third_party_library() -> None:
    code = ("import sys, edgepkg.protocol; "
            "bad = [m for m in ('cryptography', 'numpy', 'requests', 'flask', 'sqlalchemy', "
            "'tuf', 'zstandard', 'pkcs11') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _report_json() -> dict[str, object]:
    model = p.ModelTelemetry(
        version="2.0.0", inferences=1000, errors=3,
        latency_ms=p.Histogram(edges=(1.0, 2.0), counts=(10, 980, 10)),
        latency_p50_ms=1.4, latency_p95_ms=1.9, class_counts=(600, 400),
        confidence=p.Moments(count=1000, mean=0.8, std=0.1, min=0.2, max=1.0),
        features=(p.FeatureSummary("f0", p.Moments(1000, 0.0, 1.0, -3.0, 3.0),
                                   p.Histogram((-1.0, 0.0, 1.0), (160, 340, 340, 160))),),
        feedback_labelled=50, feedback_correct=45, drift={"psi": 0.03},
    )
    report = p.TelemetryReport(
        seq=7, interval_start=p.parse_time("2026-01-01T00:00:00Z"),
        interval_end=p.parse_time("2026-01-01T00:05:00Z"), models={"clf": model},
        hardware=p.HardwareHealth(cpu_temp_c=51.5, load1=0.4),
    )
    assert model.field_accuracy == 0.9
    return report.to_json()


def test_telemetry_report_round_trips() -> None:
    raw = _report_json()
    assert p.parse_telemetry_report(raw).to_json() == raw


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("seq",), -1),
        (("models", "clf", "inferences"), 2**63),
        (("models", "clf", "version"), "\x00"),
        (("models", "clf", "latency_p95_ms"), float("nan")),
        (("hardware", "cpu_temp_c"), float("inf")),
        (("models", "clf", "latency_ms", "counts"), [1, 2]),
        (("models", "clf", "drift", "evil"), 1.0),
        (("models", "clf", "class_counts"), [1] * 1001),
        (("models", "clf", "feedback", "correct"), 51),
        (("interval_start",), "2026-01-02T00:00:00Z"),
        (("extra",), 1),
    ],
)
def test_telemetry_report_refuses_bad_fields(path: tuple[str, ...], value: object) -> None:
    raw: dict[str, object] = _report_json()
    node: dict[str, object] = raw
    for key in path[:-1]:
        node = node[key]  # type: ignore[assignment]
    node[path[-1]] = value
    with pytest.raises(p.ProtocolError):
        p.parse_telemetry_report(raw)
