"""Whole-request deadlines: a server that trickles its answer inside every read timeout, or
nests JSON past the stack, gets a typed error in bounded time (issue 13 item 9; found by the
hostile-server harness, ``fuzz.hostile_server``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tuf.api import exceptions as tuf_exc

from device_updater.errors import TransportError
from device_updater.http import BadResponseError, DeviceAuth, DeviceClient, request_deadline
from device_updater.tuf_client import DeviceFetcher
from fuzz.hostile_server import SCENARIOS, HostileServer

TIMEOUT = (1.0, 1.0)


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[str]:
    # upstream is never called: every route of these scenarios is answered by the scenario
    with HostileServer("http://127.0.0.1:9", SCENARIOS[request.param]) as server:
        yield server.url


def _client(url: str) -> DeviceClient:
    return DeviceClient(url, DeviceAuth("d" * 64, lambda _m: b"sig"), timeout=TIMEOUT)


@pytest.mark.parametrize("hostile", ["trickle_body", "trickle_headers"], indirect=True)
def test_a_trickling_server_cannot_hold_an_api_call_past_its_deadline(hostile: str) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError, match="no complete answer within 3 s"):
        _client(hostile).checkin({})
    assert time.monotonic() - start < request_deadline(TIMEOUT) + 1.5


@pytest.mark.parametrize("hostile", ["trickle_body", "trickle_headers"], indirect=True)
def test_a_trickling_server_cannot_hold_a_tuf_download_past_its_deadline(hostile: str) -> None:
    fetcher = DeviceFetcher(connect_timeout=1.0, read_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(tuf_exc.SlowRetrievalError, match="not downloaded within"):
        fetcher.download_bytes(hostile + "/tuf/metadata/timestamp.json", 16 * 1024)
    assert time.monotonic() - start < fetcher.deadline_for(16 * 1024) + 1.5


@pytest.mark.parametrize("hostile", ["deep_json"], indirect=True)
def test_json_nested_past_the_stack_is_a_bad_response(hostile: str) -> None:
    with pytest.raises(BadResponseError, match="nested too deeply"):
        _client(hostile).checkin({})


@pytest.mark.parametrize("hostile", ["stall"], indirect=True)
def test_a_stalled_server_is_a_timeout(hostile: str) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError):
        _client(hostile).checkin({})
    assert time.monotonic() - start < request_deadline(TIMEOUT) + 1.5
