"""`ServingClient` against the local server, and against a stub for retries / timeouts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Iterator

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from aiohttp import web
from hypothesis import given, settings

from tests.serving.conftest import expected_probability, free_port, instance
from tfnegseq.data import values  # the Beam job's column encodings: the reference
from tfnegseq.schema import PAD_ID, fingerprint64
from tfnegseq.serving.client import (
    ServingClient,
    ServingError,
    ServingTimeout,
    ServingUnavailable,
    feature_id,
    raw_id,
    to_json,
)

pytestmark = pytest.mark.serving
INST = instance()


def expected(version: int, inst: dict = INST) -> np.ndarray:
    return expected_probability(
        version, inst["pos_item_id"], inst["neg_item_id"], inst["item_id"], inst["user_age"]
    )


@pytest.fixture
def url(local_server) -> str:
    return local_server.url


def test_predict_row_and_columnar(url: str) -> None:
    client = ServingClient(url, "recommender")
    np.testing.assert_allclose(client.predict(instances=[INST]), [expected(2)], rtol=1e-5)
    columns = {k: np.asarray([v]) for k, v in INST.items()}  # numpy goes in as lists
    np.testing.assert_allclose(client.predict(inputs=columns), [expected(2)], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,version",
    [({"version": 1}, 1), ({"version": 2}, 2), ({"label": "stable"}, 1), ({"label": "canary"}, 2)],
)
def test_version_and_label_addressing(url: str, kwargs: dict, version: int) -> None:
    client = ServingClient(url, "recommender", **kwargs)
    np.testing.assert_allclose(client.predict(instances=[INST]), [expected(version)], rtol=1e-5)
    assert client.metadata()["model_spec"]["version"] == str(version)


def test_status_and_metadata(url: str) -> None:
    client = ServingClient(url, "recommender", version=1)
    assert client.status()["model_version_status"][0]["version"] == "1"
    signatures = client.metadata()["metadata"]["signature_def"]["signature_def"]
    assert "score_examples" in signatures


def test_score_returns_one_float_per_candidate(url: str) -> None:
    client = ServingClient(url, "recommender", label="stable")
    scores = client.score(
        7, [11, 12, 13], [1, 2, 3], [21], [1], candidates=[1, 2, 3, 4], profile={"age": 30}
    )
    assert all(isinstance(s, float) for s in scores)
    np.testing.assert_allclose(scores, expected(1), rtol=1e-5)
    same = client.score(7, [11, 12, 13], [1, 2, 3], [21], [1], [1, 2, 3, 4], {"age": 30})
    assert same == scores


def test_score_with_empty_histories(url: str) -> None:
    scores = ServingClient(url, "recommender").score(1, [], [], [], [], [5], profile={"age": 0})
    np.testing.assert_allclose(scores, expected_probability(2, [], [], [5], 0), rtol=1e-5)


def test_server_errors_carry_the_server_message(url: str) -> None:
    client = ServingClient(url, "recommender")
    with pytest.raises(ServingError, match="empty candidate list") as info:
        client.score(7, [1], [1], [], [], candidates=[], profile={"age": 1})
    assert info.value.status == 400
    with pytest.raises(ServingError) as info:
        ServingClient(url, "nope").status()
    assert (info.value.status, info.value.message) == (
        404,
        "Could not find any versions of model nope",
    )
    with pytest.raises(ServingError, match="Unrecognized servable version label: x"):
        ServingClient(url, "recommender", label="x").predict(instances=[INST])


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="not both"):
        ServingClient("http://127.0.0.1:1", "m", version=1, label="a")
    client = ServingClient("http://127.0.0.1:1", "m")
    with pytest.raises(ValueError, match="exactly one"):
        client.predict()
    with pytest.raises(ValueError, match="one order per item"):
        client.score(1, [1, 2], [1], [], [], [3])


def test_to_json_and_urls() -> None:
    assert to_json({"a": np.int64(3), "b": (1, 2), "c": b"\x00\xff"}) == {
        "a": 3,
        "b": [1, 2],
        "c": {"b64": "AP8="},
    }
    assert ServingClient("http://h:1/", "a/b", label="x y").model_url == (
        "http://h:1/v1/models/a%2Fb/labels/x%20y"
    )


# ----------------------------------------------------------------- string ids and features

# Values as they appear in the shipped datasets' files (MovieLens u.user / u.item,
# KuaiRec user_features.csv / item_categories.csv) and edge cases of the parsers.
FEATURE_VALUES = [
    "M",
    "F",
    "technician",
    " technician ",
    "full_active",
    "UNKNOWN",
    "24",
    " 24",
    "+3",
    "-3",
    "3.0",
    "3.5",
    "1e3",
    "nan",
    "inf",
    "",
    "  ",
    None,
    float("nan"),
    7,
    np.int64(7),
    3.0,
    2.5,
    "123456789012345678901",
    "naïve",
    "0",
]


@pytest.mark.parametrize("value", FEATURE_VALUES)
def test_feature_id_matches_the_beam_job(value) -> None:
    assert feature_id(value) == values.categorical_codes(np.array([value], dtype=object))[0]
    assert isinstance(feature_id(value), int)


@given(
    st.one_of(
        st.text(max_size=12),
        st.integers(-(2**62), 2**62),
        st.floats(allow_nan=True, allow_infinity=True),
        st.none(),
        st.from_regex(r"[+-]?[0-9]{1,20}(\.[0-9]{0,3})?", fullmatch=True),
    )
)
@settings(max_examples=300, deadline=None)
def test_feature_id_matches_the_beam_job_on_any_value(value) -> None:
    assert feature_id(value) == values.categorical_codes(np.array([value], dtype=object))[0]


@given(
    st.one_of(
        st.text(max_size=12),
        st.from_regex(r"\s?[0-9]{1,20}\s?", fullmatch=True),
        st.integers(-(2**64), 2**64),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
    )
)
@settings(max_examples=300, deadline=None)
def test_raw_id_matches_the_beam_job(value) -> None:
    ids, reasons = values.validate_values(pd.Series([value], dtype=object), "id", "id")
    assert raw_id(value) == (PAD_ID if reasons[0] else ids[0])


def test_string_ids_are_fingerprint64() -> None:
    # The documented values (serving/README.md) for the shipped configs' text features.
    assert feature_id("M") == fingerprint64("M") == 3923287086039162729
    assert feature_id("technician") == 547610162155711460
    assert feature_id("full_active") == 5123343777113554104
    assert feature_id("24") == 24 and feature_id(None) == feature_id("") == PAD_ID
    assert raw_id("u42") == fingerprint64("u42") and raw_id("42") == 42 and raw_id(42) == 42
    assert raw_id(PAD_ID) == PAD_ID  # histories are left-padded with -1


def test_score_sends_text_features_and_ids_as_the_beam_job_writes_them(monkeypatch) -> None:
    sent = []
    client = ServingClient("http://127.0.0.1:1", "m")
    monkeypatch.setattr(client, "predict", lambda instances: sent.extend(instances) or [[0.5]])
    client.score(
        "u7",
        ["i1"],
        [1],
        [2],
        [2],
        candidates=["i3"],
        profile={"gender": "M", "age": "24", "zip": None},
        item_features={"genre": [np.int64(4)]},
    )
    assert sent == [
        {
            "user_id": fingerprint64("u7"),
            "pos_item_id": [fingerprint64("i1")],
            "pos_order": [1],
            "neg_item_id": [2],
            "neg_order": [2],
            "item_id": [fingerprint64("i3")],
            "user_gender": fingerprint64("M"),
            "user_age": 24,
            "user_zip": PAD_ID,
            "item_genre": [4],
        }
    ]
    assert all(type(v) is int for v in sent[0]["pos_item_id"] + sent[0]["item_genre"])


def test_score_with_text_profile_equals_integer_profile(url: str) -> None:
    client = ServingClient(url, "recommender")
    as_text = client.score(7, [11], [1], [21], [2], [1, 2], profile={"age": "30"})
    np.testing.assert_allclose(as_text, client.score(7, [11], [1], [21], [2], [1, 2], {"age": 30}))


# --------------------------------------------------------------------------- stub server


class Stub:
    """Answers `POST /v1/models/<name>:predict` by name: `flaky` fails twice with 503,
    `down` always 503, `bad` always 400, `slow` sleeps 1 s; counts calls per name."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls[name] += 1
        if name == "down" or (name == "flaky" and self.calls[name] <= 2):
            return web.json_response({"error": "busy"}, status=503)
        if name == "bad":
            return web.json_response({"error": "bad input"}, status=400)
        if name == "slow":
            await asyncio.sleep(1.0)
        return web.json_response({"predictions": [[0.25]]})


@contextlib.contextmanager
def stub_server() -> Iterator[tuple[str, Stub]]:
    stub = Stub()
    app = web.Application()
    app.router.add_post("/v1/models/{name}:predict", stub.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    port = free_port()

    async def run() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port}", stub
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_retries_on_503_then_succeeds() -> None:
    with stub_server() as (url, stub):
        client = ServingClient(url, "flaky", retries=2, backoff=0.01)
        assert client.predict(instances=[[1]]) == [[0.25]]
        assert stub.calls["flaky"] == 3


def test_gives_up_after_retries_on_503() -> None:
    with stub_server() as (url, stub):
        with pytest.raises(ServingError, match="busy") as info:
            ServingClient(url, "down", retries=1, backoff=0.01).predict(instances=[[1]])
        assert info.value.status == 503
        assert stub.calls["down"] == 2


def test_no_retry_on_400() -> None:
    with stub_server() as (url, stub):
        with pytest.raises(ServingError, match="bad input") as info:
            ServingClient(url, "bad", retries=3, backoff=0.01).predict(instances=[[1]])
        assert info.value.status == 400
        assert stub.calls["bad"] == 1


def test_timeout_raises_without_retry() -> None:
    with stub_server() as (url, stub):
        client = ServingClient(url, "slow", timeout=0.2, retries=2, backoff=0.01)
        with pytest.raises(ServingTimeout):
            client.predict(instances=[[1]])
        assert stub.calls["slow"] == 1


def test_connection_refused_is_retried_then_unavailable() -> None:
    client = ServingClient(f"http://127.0.0.1:{free_port()}", "m", retries=2, backoff=0.01)
    with pytest.raises(ServingUnavailable) as info:
        client.status()
    assert info.value.status is None
