"""Fuzzing the local server: random and mutated requests never get a 5xx, never crash
it, and do not grow its memory.

The server runs as a subprocess (so its RSS can be measured with psutil) over the
toy models. Hypothesis sends random JSON, valid bodies with mutations (wrong types,
missing or extra keys, huge / negative numbers, nested junk, both formats), raw
bytes, truncated JSON and odd URLs / methods; then hostile requests sent byte for
byte (JSON nested past numpy's 64 dimensions and past Python's recursion limit,
`Content-Encoding` bodies that are not so encoded or that the server cannot decode,
method tokens outside libevent's set, lower-case methods, CONNECT), after which a
valid request must still get the same scores.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import numpy as np
import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.conftest import (
    MAX_HISTORY,
    expected_probability,
    free_port,
    instance,
    nested,
    raw_request,
    server_subprocess,
)

pytestmark = pytest.mark.serving
MAX_RSS_GROWTH = 50 * 2**20

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from([2**63 - 1, -(2**63), 2**63, 2**64, -1, 0, 1e308, {"b64": "AAAA"}])
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
INPUT_KEYS = sorted(instance())


@st.composite
def valid_instances(draw: st.DrawFn) -> dict:
    """Toy-recommender instances, some with histories past the trained maximum."""
    n_pos = draw(st.integers(0, MAX_HISTORY + 2))
    n_neg = draw(st.integers(0, 3))
    ids = st.integers(-1, 10**6)
    return instance(
        user_id=draw(ids),
        pos=draw(st.lists(ids, min_size=n_pos, max_size=n_pos)),
        neg=draw(st.lists(ids, min_size=n_neg, max_size=n_neg)),
        candidates=draw(st.lists(ids, min_size=draw(st.sampled_from([1] * 9 + [0])), max_size=5)),
        user_age=draw(st.integers(0, 100)),
    )


@st.composite
def mutated_bodies(draw: st.DrawFn) -> dict:
    """A valid predict body, then zero to three mutations."""
    instances = draw(st.lists(valid_instances(), min_size=1, max_size=3))
    row = draw(st.booleans())
    body: dict[str, Any] = (
        {"instances": instances}
        if row
        else {"inputs": {k: [inst[k] for inst in instances] for k in INPUT_KEYS}}
    )
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        target = draw(st.sampled_from(instances)) if row else body.get("inputs", {})
        if not isinstance(target, dict):
            break
        key = draw(st.sampled_from(INPUT_KEYS + ["junk"]))
        op = draw(
            st.sampled_from(["delete", "replace", "huge", "nest", "both", "signature", "top"])
        )
        if op == "delete":
            target.pop(key, None)
        elif op == "replace":
            target[key] = draw(json_values)
        elif op == "huge":
            number = draw(st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -1, 1.5, 1e300]))
            target[key] = draw(st.sampled_from([number, [number], [[number]]]))
        elif op == "nest":
            target[key] = [[target.get(key)]]
        elif op == "both":
            body["inputs" if row else "instances"] = draw(json_values)
        elif op == "signature":
            body["signature_name"] = draw(st.one_of(st.text(max_size=20), json_values))
        else:
            body = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)) or body
    return body


PREDICT_PATHS = st.sampled_from(
    [
        "/v1/models/recommender:predict",
        "/v1/models/recommender/versions/1:predict",
        "/v1/models/recommender/labels/canary:predict",
        "/v1/models/other:predict",
    ]
)
odd_paths = st.one_of(
    st.builds(
        lambda name, suffix: f"/v1/models/{quote(name, safe='')}{suffix}",
        st.sampled_from(["recommender", "other", "nope", ""]) | st.text(max_size=10),
        st.sampled_from(["", ":predict", ":classify", ":regress", ":x", "/metadata", "/", "//"])
        | st.builds(lambda v: f"/versions/{v}:predict", st.integers(-5, 2**70))
        | st.builds(lambda s: f"/labels/{quote(s, safe='')}/metadata", st.text(max_size=8)),
    ),
    st.builds(lambda s: "/" + quote(s, safe="/:"), st.text(max_size=30)),
)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


@st.composite
def requests_to_send(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(method, path, body): mostly mutated predict calls, also junk bodies and URLs."""
    kind = draw(st.sampled_from(["mutated"] * 5 + ["random", "bytes", "truncated", "odd_url"]))
    method, path = "POST", draw(PREDICT_PATHS)
    if kind == "mutated" and path == "/v1/models/other:predict":
        number = st.floats() | st.integers(-(2**70), 2**70) | st.sampled_from([1e308, -1e308])
        rows = draw(st.lists(st.lists(number | json_values, min_size=2, max_size=4), max_size=3))
        data = json.dumps({draw(st.sampled_from(["instances", "inputs"])): rows}).encode()
    elif kind == "mutated":
        data = json.dumps(draw(mutated_bodies())).encode()
    elif kind == "random":
        data = json.dumps(draw(json_values)).encode()
    elif kind == "bytes":
        data = draw(st.binary(max_size=64))
    elif kind == "truncated":
        full = json.dumps(draw(mutated_bodies())).encode()
        data = full[: draw(st.integers(0, len(full)))]
    else:
        method, path = draw(st.sampled_from(METHODS)), draw(odd_paths)
        data = json.dumps(draw(json_values)).encode()
    return method, path, data


def check_reply(method: str, path: str, reply: requests.Response) -> None:
    assert reply.status_code < 500, (method, path, reply.status_code, reply.text[:300])
    if method == "HEAD" or (reply.status_code == 200 and method == "OPTIONS"):
        return
    payload = reply.json()
    if reply.status_code >= 400:
        assert isinstance(payload.get("error"), str), payload


# --------------------------------------------------------------------------- hostile

HOSTILE_METHODS = ["CONNECT", "get", "Post", "FOO", "TRACE", "PROPFIND", "M-SEARCH", "BREW"]
ENCODINGS = ["gzip", "deflate", "GZIP", "br", "zstd", "identity", "x-bogus", "gzip, deflate"]
FUZZ_MAX_BODY_BYTES = 65536


@st.composite
def deeply_nested(draw: st.DrawFn) -> tuple[str, bytes]:
    """(path, body) with a list nested around numpy's and Python's limits."""
    depth = draw(st.sampled_from([63, 64, 65, 66, 200, 990, 1010, 5000, 30000]))
    leaf = draw(st.sampled_from([1, 1.5, "a", None, {"b64": "AAAA"}, []]))
    where = draw(st.sampled_from(["row", "columnar", "top", "plain", "signature", "unclosed"]))
    if where == "unclosed":  # never closed: the parser gives up, however deep
        return "/v1/models/recommender:predict", b'{"instances": ' + b"[" * depth
    if depth > 900:  # past what json.dumps can write: build the text by hand
        inner = "[" * depth + json.dumps(leaf) + "]" * depth
    else:
        inner = json.dumps(nested(leaf, depth))
    key = draw(st.sampled_from(INPUT_KEYS))
    path = "/v1/models/recommender:predict"
    if where == "row":
        text = json.dumps({"instances": [{**instance(), key: "@"}]}).replace('"@"', inner)
    elif where == "columnar":
        inputs = {k: [v] for k, v in instance().items()}
        text = json.dumps({"inputs": {**inputs, key: "@"}}).replace('"@"', inner)
    elif where == "top":
        text = inner
    elif where == "signature":
        text = json.dumps({"instances": [instance()], "signature_name": "@"}).replace('"@"', inner)
    else:
        path, text = "/v1/models/other:predict", '{"instances": [' + inner + "]}"
    return path, text.encode()


@st.composite
def encoded_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A predict body under a Content-Encoding header it may or may not match."""
    body = json.dumps({"instances": [draw(valid_instances())]}).encode()
    kind = draw(st.sampled_from(["plain", "gzip", "deflate", "truncated", "junk", "random"]))
    if kind == "gzip":
        body = gzip.compress(body)
    elif kind == "deflate":
        body = zlib.compress(body)
    elif kind == "truncated":
        compressed = gzip.compress(body)
        body = compressed[: draw(st.integers(0, len(compressed) - 1))]
    elif kind == "junk":
        body = gzip.compress(body)[:12] + draw(st.binary(min_size=1, max_size=200))
    elif kind == "random":
        body = draw(st.binary(max_size=FUZZ_MAX_BODY_BYTES // 2))
    return body, {"Content-Encoding": draw(st.sampled_from(ENCODINGS))}


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    """(method, path, body, headers) to send byte for byte with `raw_request`."""
    kind = draw(st.sampled_from(["nested", "encoding", "method"]))
    if kind == "nested":
        path, body = draw(deeply_nested())
        return "POST", path, body, {}
    if kind == "encoding":
        body, headers = draw(encoded_bodies())
        return "POST", "/v1/models/recommender:predict", body, headers
    method = draw(st.sampled_from(HOSTILE_METHODS))
    path = draw(st.sampled_from(["/v1/models/recommender", "/v1/models/recommender:predict", "/"]))
    if method == "CONNECT":
        path = draw(st.sampled_from([path, "127.0.0.1:80", "example.com:443"]))
    body = draw(st.sampled_from([b"", json.dumps({"instances": [instance()]}).encode()]))
    return method, path, body, {}


SCORED = [
    ("/v1/models/recommender:predict", {"instances": [instance()]}),
    ("/v1/models/recommender/labels/stable:predict", {"instances": [instance(candidates=[5, 9])]}),
    (
        "/v1/models/recommender/versions/2:predict",
        {"inputs": {k: [v, v] for k, v in instance(pos=[1, 2]).items()}},
    ),
]


def scores(url: str) -> list:
    """The replies to the valid requests in `SCORED`."""
    replies = [requests.post(url + path, json=body, timeout=30) for path, body in SCORED]
    assert [r.status_code for r in replies] == [200] * len(SCORED), [r.text for r in replies]
    return [r.json() for r in replies]


@pytest.fixture(scope="module")
def fuzz_server(toy_models: pathlib.Path) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    args = [
        "--model_config_file",
        str(toy_models / "models.config"),
        "--max_body_bytes",
        str(FUZZ_MAX_BODY_BYTES),
    ]
    with server_subprocess(args, port) as proc:
        yield f"http://127.0.0.1:{port}", psutil.Process(proc.pid)


def run_fuzz(url: str, process: psutil.Process, examples: int) -> None:
    session = requests.Session()

    def send(method: str, path: str, data: bytes) -> None:
        reply = session.request(method, url + path, data=data, timeout=30)
        check_reply(method, path, reply)

    # Warm up: every code path once or twice, so first-use allocations are done.
    @settings(
        max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(requests_to_send())
    def warm_up(request: tuple[str, str, bytes]) -> None:
        send(*request)

    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(requests_to_send())
    def fuzz(request: tuple[str, str, bytes]) -> None:
        send(*request)

    warm_up()
    before = process.memory_info().rss
    fuzz()
    assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    assert session.get(f"{url}/v1/models/recommender", timeout=30).status_code == 200
    growth = process.memory_info().rss - before
    assert growth < MAX_RSS_GROWTH, f"server RSS grew by {growth / 2**20:.1f} MiB"


def test_fuzz_1000_requests(fuzz_server: tuple[str, psutil.Process]) -> None:
    run_fuzz(*fuzz_server, examples=1000)


def test_hostile_requests_get_4xx_and_scores_stay_the_same(
    fuzz_server: tuple[str, psutil.Process],
) -> None:
    url, process = fuzz_server
    before = scores(url)
    inst = SCORED[0][1]["instances"][0]
    expected = expected_probability(
        2, inst["pos_item_id"], inst["neg_item_id"], inst["item_id"], 30
    )
    np.testing.assert_allclose(before[0]["predictions"][0], expected, rtol=1e-5)
    seen: dict[int, int] = {}

    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(hostile_requests())
    def fuzz(request: tuple[str, str, bytes, dict[str, str]]) -> None:
        method, path, body, headers = request
        status, reply_headers, data = raw_request(url, method, path, body, headers)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (method, path, body[:80], headers, status, data[:300])
        if status >= 400:
            assert reply_headers["Content-Type"].startswith("application/json"), data[:300]
            assert isinstance(json.loads(data)["error"], str), data[:300]

    fuzz()
    assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    assert scores(url) == before
    assert {400, 405} <= set(seen), seen  # the strategies reached the fixed paths
