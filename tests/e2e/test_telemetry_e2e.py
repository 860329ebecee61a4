"""Field telemetry end to end on the real device: install through the real server (the
reference profile is recorded after validation), the app's records through the daemon's
telemetry service, and the report posted, signed by the token-held device key, to a minimal
stub of ``POST /api/v1/devices/<id>/telemetry`` (the real endpoint is built on another branch)
that checks the signature and parses the body with :mod:`edgepkg.protocol`."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from device_updater.http import DeviceClient
from device_updater.state import Phase
from device_updater.status import status
from device_updater.telemetry.records import parse_record
from device_updater.telemetry.reference import load_profile
from edgepkg.crypto import verify_signature
from edgepkg.protocol import (
    HEADER_DEVICE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    TelemetryReport,
    parse_telemetry_report,
    signing_string,
)
from tests.e2e.conftest import MODEL, World


class _Stub:
    def __init__(self, device_id: str, public_key: Any) -> None:
        self.device_id, self.public_key = device_id, public_key
        self.reports: list[TelemetryReport] = []
        self.seen: set[int] = set()


@pytest.fixture
def stub_endpoint(e2e_world: Callable[[], World]) -> Iterator[tuple[World, _Stub, str]]:
    world = e2e_world()
    stub = _Stub(status(world.config)["device_id"], world.device_pub)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            h = self.headers
            try:
                assert self.path == f"/api/v1/devices/{stub.device_id}/telemetry"
                assert h[HEADER_DEVICE] == stub.device_id
                verify_signature(stub.public_key, base64.b64decode(h[HEADER_SIGNATURE]),
                                 signing_string("POST", self.path, h[HEADER_TIMESTAMP],
                                                h[HEADER_NONCE], body))
                report = parse_telemetry_report(json.loads(body))
            except Exception as exc:  # any failure is a 400 the test sees
                self._answer(400, {"error": {"code": "bad", "message": str(exc)}})
                return
            dup = report.seq in stub.seen
            stub.seen.add(report.seq)
            stub.reports.append(report)
            self._answer(200, {"accepted": True, "duplicate": dup})

        def _answer(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield world, stub, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_field_report_is_signed_parsed_and_scored_against_the_install_profile(
        stub_endpoint: tuple[World, _Stub, str]) -> None:
    world, stub, url = stub_endpoint
    world.publish("1.0.0", world.models["1.0.0"])
    world.rollout("1.0.0")
    agent = world.agent()
    agent.recover()
    for _ in range(4):
        agent.run_cycle()
        if agent.store(MODEL).load().phase is Phase.TRIAL:
            world.healthy("1.0.0")
        if agent.store(MODEL).load().phase is Phase.COMMITTED:
            break
    assert agent.store(MODEL).load().phase is Phase.COMMITTED

    # The profile was recorded from the holdout right after validation passed.
    profile = load_profile(agent.layout.model_dir(MODEL), "1.0.0")
    assert profile is not None and len(profile.features) == 16

    tel = agent.telemetry
    assert tel is not None
    rng = np.random.default_rng(3)
    for i in range(300):
        x = rng.normal(5.0, 1.0, size=16)  # far from the holdout: drift
        tel.record(parse_record(json.dumps({
            "type": "inference", "model": MODEL, "latency_ms": 1.0 + i % 7,
            "prediction": int(i % 4), "confidence": 0.9, "features": x.tolist(),
            "prediction_id": f"r{i}"})))
    tel.record(parse_record('{"type":"feedback","prediction_id":"r5","label":1}'))
    tel.close_interval()
    tel.sender = DeviceClient(url, agent.auth)
    res = tel.flush()
    assert res.sent == 1, res
    [report] = stub.reports
    m = report.models[MODEL]
    assert m.version == "1.0.0" and m.inferences == 300
    assert (m.feedback_labelled, m.feedback_correct) == (1, 1)
    assert m.features[0].histogram is not None
    assert m.features[0].histogram.edges == profile.features[0].edges
    assert m.drift["psi"] > 1.0 and m.drift["ks"] > 0.5
    assert report.hardware.disk_total_bytes is not None
    assert len(tel.queue) == 0
