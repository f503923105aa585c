"""Limits on what one request and one client may cost the local server
(`tfnegseq.serving.limits`): rows, candidates and history per request (400 naming the
flag), scoring in chunks of rows, a body read timeout (408), an idle timeout for
connections that never send a request, and a connection cap (503)."""

from __future__ import annotations

import json
import pathlib
import socket
import time

import numpy as np
import pytest
import requests

from tests.serving.conftest import expected_probability, instance

pytestmark = pytest.mark.serving
PREDICT = "/v1/models/recommender:predict"


def expected(version: int, inst: dict) -> np.ndarray:
    return expected_probability(
        version, inst["pos_item_id"], inst["neg_item_id"], inst["item_id"], inst["user_age"]
    )


@pytest.fixture(scope="module")
def small_limits_server(toy_models: pathlib.Path):
    from tfnegseq.serving.limits import Limits
    from tfnegseq.serving.server import serve_in_thread

    limits = Limits(max_rows=3, max_candidates=5, max_history=4, chunk_rows=2)
    with serve_in_thread(
        model_config_file=str(toy_models / "models.config"),
        file_system_poll_wait_seconds=0,
        limits=limits,
    ) as server:
        yield server


@pytest.mark.parametrize(
    "body,flag",
    [
        ({"instances": [instance()] * 4}, "--max_rows"),
        ({"inputs": {k: [v] * 4 for k, v in instance().items()}}, "--max_rows"),
        ({"instances": [instance(candidates=range(6))]}, "--max_candidates"),
        ({"instances": [instance(pos=range(5))]}, "--max_history"),
        ({"instances": [instance(neg=range(5))]}, "--max_history"),
    ],
    ids=["rows", "rows_columnar", "candidates", "pos_history", "neg_history"],
)
def test_work_past_a_limit_is_400_naming_the_flag(
    small_limits_server, body: dict, flag: str
) -> None:
    reply = requests.post(small_limits_server.url + PREDICT, json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    assert flag in reply.json()["error"]


def test_requests_at_the_limits_are_scored_in_chunks(small_limits_server) -> None:
    rows = [instance(user_id=i, candidates=[i, 2, 3, 4, 5], pos=[1, 2, 3, 4]) for i in range(3)]
    servable = small_limits_server.api.repository.resolve("recommender")
    calls: list[int] = []
    run = servable.run

    def counting_run(key, inputs):
        calls.append(len(next(iter(inputs.values()))))
        return run(key, inputs)

    servable.run = counting_run
    try:
        reply = requests.post(
            small_limits_server.url + PREDICT, json={"instances": rows}, timeout=30
        )
    finally:
        del servable.run
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(
        reply.json()["predictions"], [expected(2, r) for r in rows], rtol=1e-5
    )
    assert calls == [2, 1]  # chunk_rows=2


def test_limits_validate_their_values() -> None:
    from tfnegseq.serving.limits import Limits

    with pytest.raises(ValueError, match="`chunk_rows` must be a positive integer"):
        Limits(chunk_rows=0)
    with pytest.raises(ValueError, match="`body_read_timeout` must be positive"):
        Limits(body_read_timeout=0)


def _recv_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes (the socket has a timeout)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_stalled_clients_are_timed_out_and_capped(toy_models: pathlib.Path) -> None:
    from tfnegseq.serving.limits import Limits
    from tfnegseq.serving.server import serve_in_thread

    limits = Limits(max_connections=3, body_read_timeout=1.0, idle_timeout=1.0)
    with serve_in_thread(
        model_config_file=str(toy_models / "models.config"),
        file_system_poll_wait_seconds=0,
        limits=limits,
    ) as server:
        address = ("127.0.0.1", server.port)
        body = json.dumps({"instances": [instance()]}).encode()
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        stalled = [socket.create_connection(address, timeout=10) for _ in range(3)]
        try:
            start = time.monotonic()
            stalled[1].sendall(head.encode()[:20])  # half a request line, then nothing
            stalled[2].sendall(head.encode() + body[:10])  # headers, a tenth of the body
            time.sleep(0.3)
            with socket.create_connection(address, timeout=10) as extra:
                extra.sendall(b"GET /v1/models/recommender HTTP/1.1\r\nHost: x\r\n\r\n")
                refused = _recv_all(extra)
            assert refused.startswith(b"HTTP/1.1 503"), refused
            assert b"--max_connections" in refused
            replies = [_recv_all(s) for s in stalled]
            assert time.monotonic() - start < 5
        finally:
            for s in stalled:
                s.close()
        assert replies[0] == replies[1] == b""  # closed without a request: nothing to answer
        assert replies[2].startswith(b"HTTP/1.1 408"), replies[2]
        assert b"--body_read_timeout_seconds" in replies[2]
        reply = requests.post(server.url + PREDICT, data=body, timeout=30)
        assert reply.status_code == 200
        np.testing.assert_allclose(
            reply.json()["predictions"][0], expected(2, instance()), rtol=1e-5
        )
