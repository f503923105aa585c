"""Limits on what one request and one client may cost the local server
(`tfnegseq.serving.limits`): rows, candidates, history and scored examples (rows x
candidates) per request (400 naming the flag), scoring in chunks of rows and of
examples, a body read timeout (408), an idle timeout for connections that never send a
request, and a connection cap (503)."""

from __future__ import annotations

import json
import pathlib
import socket
import time

import numpy as np
import pytest
import requests

from tests.serving.conftest import cain_instance, expected_probability, instance

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

    limits = Limits(max_rows=3, max_candidates=5, max_history=4, max_lifelong=4, chunk_rows=2)
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


def test_a_lifelong_list_past_max_lifelong_is_400_and_at_it_is_scored(small_limits_server
                                                                       ) -> None:
    """`life_*` lists (the CAIN export) have their own cap, `--max_lifelong`: before it
    they were bounded by the body size only."""
    url = small_limits_server.url + "/v1/models/cain:predict"
    life = [(100 + i, 1, 1.0) for i in range(5)]
    reply = requests.post(url, json={"instances": [cain_instance(life=life)]}, timeout=30)
    assert reply.status_code == 400, reply.text
    assert "--max_lifelong" in reply.json()["error"] and "life_" in reply.json()["error"]
    reply = requests.post(url, json={"instances": [cain_instance(life=life[:4])]}, timeout=30)
    assert reply.status_code == 200, reply.text


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


@pytest.fixture(scope="module")
def examples_limits_server(toy_models: pathlib.Path):
    from tfnegseq.serving.limits import Limits
    from tfnegseq.serving.server import serve_in_thread

    limits = Limits(
        max_rows=8, max_candidates=8, max_history=8, max_examples=20, chunk_rows=8,
        chunk_examples=6,
    )  # fmt: skip
    with serve_in_thread(
        model_config_file=str(toy_models / "models.config"),
        file_system_poll_wait_seconds=0,
        limits=limits,
    ) as server:
        yield server


def _cands(n: int, row: int = 0) -> list[int]:
    return [row + c for c in range(n)]


@pytest.mark.parametrize("columnar", [False, True], ids=["rows", "columnar"])
def test_more_examples_than_max_examples_is_400_and_the_server_stays_up(
    examples_limits_server, columnar: bool
) -> None:
    # 3 rows x 7 candidates = 21 examples: each within --max_rows / --max_candidates,
    # together over --max_examples=20.
    rows = [instance(user_id=i, candidates=_cands(7, i)) for i in range(3)]
    body = (
        {"inputs": {k: [r[k] for r in rows] for k in rows[0]}} if columnar else {"instances": rows}
    )
    url = examples_limits_server.url
    reply = requests.post(url + PREDICT, json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert "--max_examples" in error and "21" in error and "20" in error, error
    # The server answers the next request.
    reply = requests.post(url + PREDICT, json={"instances": rows[:2]}, timeout=30)
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(
        reply.json()["predictions"], [expected(2, r) for r in rows[:2]], rtol=1e-5
    )
    assert requests.get(url + "/v1/models/recommender", timeout=30).status_code == 200


@pytest.mark.parametrize(
    "n_rows,n_cands,runs",
    [
        # (rows, candidates) of each graph run, chunk_examples=6
        (5, 3, [(2, 3), (2, 3), (1, 3)]),  # 15 examples; 6 // 3 = 2 rows per run
        (5, 4, [(1, 4)] * 5),  # 20 examples, at --max_examples; 6 // 4 = 1 row per run
        # a row of more than chunk_examples candidates: its candidates 6 at a time
        (2, 8, [(1, 6), (1, 2), (1, 6), (1, 2)]),
        (2, 2, [(2, 2)]),  # 4 examples: one run
    ],
)
def test_requests_are_scored_in_runs_of_at_most_chunk_examples(
    examples_limits_server, n_rows: int, n_cands: int, runs: list[tuple[int, int]]
) -> None:
    rows = [instance(user_id=i, candidates=_cands(n_cands, 3 * i)) for i in range(n_rows)]
    servable = examples_limits_server.api.repository.resolve("recommender")
    whole = servable.run(
        "serving_default",
        {k: np.asarray([r[k] for r in rows], dtype=np.int64) for k in rows[0]},
    )["probability"]  # unchunked: one graph run
    calls: list[tuple[int, int]] = []
    run = servable.run

    def counting_run(key, inputs):
        calls.append(inputs["item_id"].shape)
        return run(key, inputs)

    servable.run = counting_run
    try:
        reply = requests.post(
            examples_limits_server.url + PREDICT, json={"instances": rows}, timeout=30
        )
    finally:
        del servable.run
    assert reply.status_code == 200, reply.text
    scores = np.asarray(reply.json()["predictions"])
    assert scores.shape == (n_rows, n_cands)
    np.testing.assert_allclose(scores, whole, rtol=1e-6)
    np.testing.assert_allclose(scores, [expected(2, r) for r in rows], rtol=1e-5)
    assert calls == runs


def test_default_limits_refuse_the_benchmarks_maximal_request() -> None:
    """4096 rows x 206 candidates (what a 16 MiB body holds at the default caps) is
    843,776 examples: refused before the graph runs, naming --max_examples."""
    from tfnegseq.serving.limits import Limits, check_request_size
    from tfnegseq.serving.status import ServingStatus

    rows, cands, history = 4096, 206, 8
    arrays = {
        "user_id": np.zeros([rows], np.int64),
        "pos_item_id": np.zeros([rows, history], np.int64),
        "neg_item_id": np.zeros([rows, history], np.int64),
        "item_id": np.zeros([rows, cands], np.int64),
        "item_category": np.zeros([rows, cands], np.int64),
    }
    with pytest.raises(ServingStatus) as e:
        check_request_size(arrays, Limits())
    assert e.value.http_status == 400
    assert "--max_examples" in e.value.message and str(rows * cands) in e.value.message


def test_examples_count_candidates_not_history() -> None:
    """Examples are rows x the widest candidate input (`item_id`, `item_<f>`); history
    width does not count, and a signature without candidate inputs has one per row."""
    from tfnegseq.serving.limits import Limits, check_request_size, examples_per_row
    from tfnegseq.serving.status import ServingStatus

    limits = Limits(max_examples=10)
    arrays = {
        "pos_item_id": np.zeros([2, 8], np.int64),  # 16 history entries: not examples
        "item_id": np.zeros([2, 5], np.int64),  # 2 x 5 = 10 examples
        "user_id": np.zeros([2], np.int64),
    }
    assert examples_per_row(arrays) == 5
    check_request_size(arrays, limits)
    assert examples_per_row({"x": np.zeros([11, 3]), "examples": np.zeros([11])}) == 1
    with pytest.raises(ServingStatus, match="11 examples"):
        check_request_size({"examples": np.zeros([11], object)}, limits)


def test_limits_validate_their_values() -> None:
    from tfnegseq.serving.limits import Limits

    with pytest.raises(ValueError, match="`chunk_rows` must be a positive integer"):
        Limits(chunk_rows=0)
    with pytest.raises(ValueError, match="`max_examples` must be a positive integer"):
        Limits(max_examples=0)
    with pytest.raises(ValueError, match="`chunk_examples` must be a positive integer"):
        Limits(chunk_examples=-1)
    with pytest.raises(ValueError, match="`body_read_timeout` must be positive"):
        Limits(body_read_timeout=0)
    with pytest.raises(ValueError, match="`graph_lanes` must be a positive integer"):
        Limits(graph_lanes=0)


def test_cli_flags_set_the_example_limits(capsys) -> None:
    from tfnegseq.serving import server

    with pytest.raises(SystemExit) as e:
        server.main(["--max_examples", "0"])
    assert e.value.code == 2
    assert "`max_examples` must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        server.main(["--chunk_examples", "0"])
    assert "`chunk_examples` must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        server.main(["--graph_lanes", "0"])
    assert "`graph_lanes` must be a positive integer" in capsys.readouterr().err


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


def test_candidate_chunks_join_along_the_candidate_axis_or_run_whole() -> None:
    """run_in_chunks with chunk_candidates: per-candidate outputs are joined in order;
    an output that is not [rows, candidates] makes that row chunk run whole."""
    from tfnegseq.serving.limits import run_in_chunks

    items = np.arange(3 * 7, dtype=np.int64).reshape(3, 7)
    inputs = {"item_id": items, "pos_item_id": np.ones((3, 2), np.int64)}
    shapes: list[tuple[int, ...]] = []

    def per_candidate(x):
        shapes.append(x["item_id"].shape)
        return {"p": x["item_id"] * 10 + x["pos_item_id"][:, :1]}

    out = run_in_chunks(per_candidate, inputs, chunk_rows=2, chunk_candidates=3)
    np.testing.assert_array_equal(out["p"], items * 10 + 1)
    assert shapes == [(2, 3), (2, 3), (2, 1), (1, 3), (1, 3), (1, 1)]

    def per_row(x):  # one value per row: not splittable along candidates
        return {"s": x["item_id"].sum(axis=1)}

    out = run_in_chunks(per_row, inputs, chunk_rows=2, chunk_candidates=3)
    np.testing.assert_array_equal(out["s"], items.sum(axis=1))
