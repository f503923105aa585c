"""TF Serving REST contract: the local server, and a real TF Serving when one is named.

Every test takes `target`: the local server on a free loopback port, and (when env
`TFNEGSEQ_SERVING_URL` names a TF Serving that serves the toy models, see
`serving/README.md`) that server. The `test_cain_*` tests do the same against the toy
`cain`, shaped like the CAIN export (lifelong lists `life_*`, float `life_value`). Statuses and messages are TF Serving's
(`model_servers/http_rest_api_handler.cc`, `http_server.cc`, `util/json_tensor.cc`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import threading
import time
from typing import Any

import numpy as np
import pytest
import requests

from tests.serving.conftest import (
    CAIN_INPUTS,
    LIFELONG,
    LIFELONG_LENGTH,
    LOCAL_MAX_BODY_BYTES,
    MAX_HISTORY,
    cain_instance,
    copy_version,
    expected_cain_probability,
    expected_probability,
    free_port,
    instance,
    left_pad_lifelong,
    nested,
    raw_request,
    server_subprocess,
)

pytestmark = pytest.mark.serving
REAL_URL = os.environ.get("TFNEGSEQ_SERVING_URL")
REC = "/v1/models/recommender"


@dataclasses.dataclass
class Target:
    """A server under test: `kind` is "local" or "tf_serving"."""

    kind: str
    url: str

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)

    def post(self, path: str, body: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(self.url + path, data=data, timeout=30)

    def local_only(self, reason: str) -> None:
        if self.kind != "local":
            pytest.skip(f"local server only: {reason}")

    def assert_healthy(self) -> None:
        assert self.get(REC).status_code == 200


NO_REAL_SERVER = "TFNEGSEQ_SERVING_URL is not set: no real TF Serving to test against"


@pytest.fixture(params=["local", "tf_serving"] if REAL_URL else ["local"])
def target(request: pytest.FixtureRequest) -> Target:
    """The local server; also a real TF Serving when `TFNEGSEQ_SERVING_URL` is set."""
    if request.param == "tf_serving":
        return Target("tf_serving", (REAL_URL or "").rstrip("/"))
    return Target("local", request.getfixturevalue("local_server").url)


def columnar(*instances: dict) -> dict:
    return {k: [inst[k] for inst in instances] for k in instances[0]}


def expected(version: int, inst: dict) -> np.ndarray:
    return expected_probability(
        version, inst["pos_item_id"], inst["neg_item_id"], inst["item_id"], inst["user_age"]
    )


# --------------------------------------------------------------------------- good requests


def test_status_lists_all_versions_latest_first(target: Target) -> None:
    reply = target.get(REC)
    assert reply.status_code == 200
    ok = {"error_code": "OK", "error_message": ""}
    assert reply.json() == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": ok},
            {"version": "1", "state": "AVAILABLE", "status": ok},
        ]
    }


def test_status_by_version(target: Target) -> None:
    reply = target.get(f"{REC}/versions/1").json()
    assert [s["version"] for s in reply["model_version_status"]] == ["1"]


def test_status_by_label_ignores_the_label(target: Target) -> None:
    # GetModelStatusImpl only looks at model_spec.version: a label lists all versions.
    for label in ("stable", "no_such_label"):
        reply = target.get(f"{REC}/labels/{label}")
        assert reply.status_code == 200
        assert [s["version"] for s in reply.json()["model_version_status"]] == ["2", "1"]


@pytest.mark.parametrize(
    "suffix,version", [("", "2"), ("/versions/1", "1"), ("/labels/stable", "1")]
)
def test_metadata(target: Target, suffix: str, version: str) -> None:
    reply = target.get(f"{REC}{suffix}/metadata")
    assert reply.status_code == 200
    body = reply.json()
    assert body["model_spec"] == {"name": "recommender", "signature_name": "", "version": version}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    serving = signatures["serving_default"]
    assert serving["method_name"] == "tensorflow/serving/predict"
    assert set(serving["inputs"]) == set(instance())
    assert serving["inputs"]["item_id"]["dtype"] == "DT_INT64"
    assert serving["inputs"]["item_id"]["tensor_shape"]["dim"] == [
        {"size": "-1", "name": ""},
        {"size": "-1", "name": ""},
    ]
    assert serving["outputs"]["probability"]["dtype"] == "DT_FLOAT"
    assert signatures["score_examples"]["inputs"]["examples"]["dtype"] == "DT_STRING"


def test_predict_row_format_uses_latest_version(target: Target) -> None:
    inst = instance()
    reply = target.post(f"{REC}:predict", {"instances": [inst]})
    assert reply.status_code == 200
    (prediction,) = reply.json()["predictions"]
    np.testing.assert_allclose(prediction, expected(2, inst), rtol=1e-5)


@pytest.mark.parametrize("suffix,version", [("/versions/1", 1), ("/versions/2", 2)])
def test_predict_columnar_format_by_version(target: Target, suffix: str, version: int) -> None:
    a, b = instance(), instance(user_id=8, candidates=[5, 6, 7, 8], user_age=50)
    reply = target.post(f"{REC}{suffix}:predict", {"inputs": columnar(a, b)})
    assert reply.status_code == 200
    outputs = reply.json()["outputs"]
    np.testing.assert_allclose(outputs, [expected(version, a), expected(version, b)], rtol=1e-5)


@pytest.mark.parametrize("label,version", [("stable", 1), ("canary", 2)])
def test_predict_by_label(target: Target, label: str, version: int) -> None:
    inst = instance(candidates=[3, 9])
    reply = target.post(f"{REC}/labels/{label}:predict", {"instances": [inst, inst]})
    assert reply.status_code == 200
    np.testing.assert_allclose(
        reply.json()["predictions"], [expected(version, inst)] * 2, rtol=1e-5
    )


def test_predict_left_padded_batch_and_empty_histories(target: Target) -> None:
    long = instance(pos=[1, 2, 3, 4], neg=[5, 6])
    short = instance(pos=[-1, -1, 7, 8], neg=[-1, 9])  # left-padded with -1 ids / 0 orders
    short["pos_order"], short["neg_order"] = [0, 0, 1, 2], [0, 1]
    empty = instance(pos=[], neg=[])
    reply = target.post(f"{REC}:predict", {"inputs": columnar(long, short)})
    assert reply.status_code == 200
    np.testing.assert_allclose(
        reply.json()["outputs"], [expected(2, long), expected(2, short)], rtol=1e-5
    )
    reply = target.post(f"{REC}:predict", {"instances": [empty]})
    assert reply.status_code == 200
    np.testing.assert_allclose(reply.json()["predictions"], [expected(2, empty)], rtol=1e-5)


def test_score_examples_signature_takes_b64_examples(target: Target) -> None:
    import tensorflow as tf

    def example(item: int) -> dict:
        feature = {
            "user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
            "item_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[item])),
        }
        data = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        return {"b64": base64.b64encode(data).decode()}

    body = {"signature_name": "score_examples", "instances": [example(3), example(10)]}
    reply = target.post(f"{REC}/versions/1:predict", body)
    assert reply.status_code == 200
    np.testing.assert_allclose(
        reply.json()["predictions"], 1 / (1 + np.exp(-np.array([3, 3]) / 7)), rtol=1e-5
    )


def test_multi_output_model_and_int_json_for_float_input(target: Target) -> None:
    reply = target.post("/v1/models/other:predict", {"instances": [[1, 2, 3], [0.5, 0, 1]]})
    assert reply.status_code == 200
    assert reply.json()["predictions"] == [
        {"double": [2.0, 4.0, 6.0], "total": 6.0},
        {"double": [1.0, 0.0, 2.0], "total": 1.5},
    ]
    reply = target.post("/v1/models/other:predict", {"inputs": {"x": [[1, 2, 3]]}})
    assert reply.json()["outputs"] == {"double": [[2.0, 4.0, 6.0]], "total": [6.0]}


# --------------------------------------------------------------------------- bad requests

PREDICT = f"{REC}:predict"
GOOD = {"instances": [instance()]}


def _with(**changes: Any) -> dict:
    return {"instances": [{**instance(), **changes}]}


def _without(key: str, fmt: str = "instances") -> dict:
    inst = {k: v for k, v in instance().items() if k != key}
    return {"instances": [inst]} if fmt == "instances" else {"inputs": columnar(inst)}


BAD_CASES = [
    # id, method, path, body, status, substring of the error message (None: not checked)
    ("malformed_json", "POST", PREDICT, b'{"instances": [', 400, "JSON Parse error"),
    ("empty_body", "POST", PREDICT, b"", 400, "JSON Parse error"),
    ("not_an_object", "POST", PREDICT, b"[1, 2]", 400, "Is not object"),
    (
        "unknown_model",
        "POST",
        "/v1/models/nope:predict",
        GOOD,
        404,
        "Servable not found for request: Latest(nope)",
    ),
    (
        "unknown_model_status",
        "GET",
        "/v1/models/nope",
        None,
        404,
        "Could not find any versions of model nope",
    ),
    ("unknown_model_metadata", "GET", "/v1/models/nope/metadata", None, 404, "Servable not found"),
    ("unknown_version", "POST", f"{REC}/versions/9:predict", GOOD, 404, "Specific(recommender, 9)"),
    (
        "unknown_version_status",
        "GET",
        f"{REC}/versions/9",
        None,
        404,
        "Could not find version 9 of model recommender",
    ),
    (
        "unknown_label",
        "POST",
        f"{REC}/labels/nope:predict",
        GOOD,
        400,
        "Unrecognized servable version label: nope",
    ),
    (
        "unknown_label_metadata",
        "GET",
        f"{REC}/labels/nope/metadata",
        None,
        400,
        "Unrecognized servable version label",
    ),
    ("wrong_dtype_row", "POST", PREDICT, _with(user_id="seven"), 400, "user_id"),
    (
        "float_for_int64",
        "POST",
        PREDICT,
        _with(item_id=[1.5, 2]),
        400,
        "is not of expected type: int64",
    ),
    (
        "wrong_dtype_columnar",
        "POST",
        PREDICT,
        {"inputs": {**columnar(instance()), "item_id": [["a"]]}},
        400,
        None,
    ),
    ("missing_input_row", "POST", PREDICT, _without("item_id"), 400, "keys must be equal to"),
    (
        "missing_input_columnar",
        "POST",
        PREDICT,
        _without("item_id", "inputs"),
        400,
        "Missing named input: item_id",
    ),
    (
        "unknown_input_row",
        "POST",
        PREDICT,
        _with(colour=3),
        400,
        "does not have named input: colour",
    ),
    (
        "rank_mismatch",
        "POST",
        PREDICT,
        {"inputs": {**columnar(instance()), "item_id": [1, 2]}},
        400,
        None,
    ),
    (
        "ragged_instances",
        "POST",
        PREDICT,
        {"instances": [instance(), instance(candidates=[1])]},
        400,
        "Expecting tensor size: 4 but got: 1",
    ),
    (
        "ragged_list",
        "POST",
        PREDICT,
        {"inputs": {**columnar(instance()), "item_id": [[1, 2], [3]]}},
        400,
        "unexpected size",
    ),
    (
        "history_not_left_padded",
        "POST",
        PREDICT,
        {"instances": [instance(pos=[11, -1, 12])]},
        400,
        "pos_item_id is not left-padded",
    ),
    (
        "empty_candidate_list",
        "POST",
        PREDICT,
        {"instances": [instance(candidates=[])]},
        400,
        "empty candidate list",
    ),
    (
        "instances_and_inputs",
        "POST",
        PREDICT,
        {**GOOD, "inputs": columnar(instance())},
        400,
        "expecting only one of 'inputs' or 'instances'",
    ),
    (
        "neither_instances_nor_inputs",
        "POST",
        PREDICT,
        {"signature_name": "serving_default"},
        400,
        "Missing 'inputs' or 'instances' key",
    ),
    ("empty_instances", "POST", PREDICT, {"instances": []}, 400, "No values in 'instances' array"),
    (
        "unknown_signature",
        "POST",
        PREDICT,
        {**GOOD, "signature_name": "nope"},
        400,
        'Serving signature name: "nope" not found',
    ),
    (
        "signature_not_a_string",
        "POST",
        PREDICT,
        {**GOOD, "signature_name": 3},
        400,
        "'signature_name' key must be a string",
    ),
    ("unknown_verb", "POST", f"{REC}:explode", GOOD, 400, "Malformed request: POST"),
    ("get_predict", "GET", PREDICT, None, 400, "Malformed request: GET"),
    ("put_status", "PUT", REC, None, 400, "Malformed request: PUT"),
    ("missing_model_name", "GET", "/v1/models", None, 400, "Missing model name in request."),
    (
        "version_overflow",
        "GET",
        f"{REC}/versions/99999999999999999999",
        None,
        400,
        "Failed to convert version",
    ),
    ("outside_v1", "GET", "/v2/models/recommender", None, 404, None),
]


@pytest.mark.parametrize(
    "method,path,body,status,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_request(
    target: Target, method: str, path: str, body: Any, status: int, message: str | None
) -> None:
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = requests.request(method, target.url + path, data=data, timeout=30)
    assert reply.status_code == status, reply.text
    if not (target.kind == "tf_serving" and status == 404 and path.startswith("/v2")):
        error = reply.json()["error"]  # libevent's own 404 page is HTML
        assert isinstance(error, str) and error
        if message is not None:
            assert message in error
    target.assert_healthy()


def test_wrong_dtype_names_the_input_in_both_formats(target: Target) -> None:
    target.local_only("TF Serving does not name the input in columnar-format type errors")
    reply = target.post(PREDICT, {"inputs": {**columnar(instance()), "user_age": ["old"]}})
    assert reply.status_code == 400
    assert "user_age" in reply.json()["error"]


def test_body_over_the_cap_is_413(target: Target) -> None:
    target.local_only("TF Serving has no request body cap (it reads any size)")
    body = {"instances": [instance()], "junk": "x" * LOCAL_MAX_BODY_BYTES}
    reply = target.post(PREDICT, body)
    assert reply.status_code == 413
    assert "exceeds the limit" in reply.json()["error"]
    target.assert_healthy()


def test_unknown_http_method_is_405(target: Target) -> None:
    target.local_only("libevent answers 501 to methods outside its allowed set")
    reply = requests.request("TRACE", target.url + REC, timeout=30)
    assert reply.status_code == 405
    assert "error" in reply.json()
    target.assert_healthy()


def test_concurrent_requests_all_succeed(target: Target) -> None:
    errors: list[str] = []

    def worker(seed: int) -> None:
        for i in range(5):
            inst = instance(user_id=seed, candidates=[seed, i, 3])
            version = 1 + (seed + i) % 2
            reply = target.post(f"{REC}/versions/{version}:predict", {"instances": [inst]})
            try:
                assert reply.status_code == 200, reply.text
                np.testing.assert_allclose(
                    reply.json()["predictions"][0], expected(version, inst), rtol=1e-5
                )
            except AssertionError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# --------------------------------------------------------------------------- cain (lifelong)

CAIN = "/v1/models/cain"
CAIN_PREDICT = f"{CAIN}:predict"
CAIN_GOOD = {"instances": [cain_instance()]}


def cain_scores_unchanged(target: Target) -> None:
    """A valid cain request still scores as the reference (the server stays up)."""
    inst = cain_instance()
    reply = target.post(CAIN_PREDICT, {"instances": [inst]})
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(
        reply.json()["predictions"], [expected_cain_probability(2, inst)], rtol=1e-5
    )


@pytest.mark.parametrize("suffix,version", [("", "2"), ("/versions/1", "1")])
def test_cain_metadata_lists_the_lifelong_inputs(
    target: Target, suffix: str, version: str
) -> None:
    reply = target.get(f"{CAIN}{suffix}/metadata")
    assert reply.status_code == 200
    body = reply.json()
    assert body["model_spec"] == {"name": "cain", "signature_name": "", "version": version}
    serving = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert serving["method_name"] == "tensorflow/serving/predict"
    assert set(serving["inputs"]) == set(cain_instance())
    dtypes = {name: spec["dtype"] for name, spec in serving["inputs"].items()}
    assert {name: dtypes[name] for name in LIFELONG} == {
        "life_item_id": "DT_INT64",
        "life_order": "DT_INT64",
        "life_polarity": "DT_INT64",
        "life_value": "DT_FLOAT",
    }
    assert [k for k, v in dtypes.items() if v != "DT_INT64"] == ["life_value"]
    for name in LIFELONG:
        assert serving["inputs"][name]["tensor_shape"]["dim"] == [
            {"size": "-1", "name": ""},
            {"size": "-1", "name": ""},
        ]
    assert serving["outputs"]["probability"]["dtype"] == "DT_FLOAT"


@pytest.mark.parametrize(
    "suffix,version", [("", 2), ("/versions/1", 1), ("/labels/canary", 2)]
)
@pytest.mark.parametrize("fmt", ["instances", "inputs"])
def test_cain_predict_row_and_columnar_formats(
    target: Target, suffix: str, version: int, fmt: str
) -> None:
    a = cain_instance()
    b = cain_instance(
        user_id=8,
        pos=[4, 5, 6],
        life=[(7, -1, 0.25), (9, 1, 4.5), (10, 1, -1.0), (12, 0, 8.0)],
        candidates=[5, 6, 7, 8],
        user_age=50,
    )
    body = {"instances": [a, b]} if fmt == "instances" else {"inputs": columnar(a, b)}
    reply = target.post(f"{CAIN}{suffix}:predict", body)
    assert reply.status_code == 200, reply.text
    got = reply.json()["predictions" if fmt == "instances" else "outputs"]
    want = [expected_cain_probability(version, a), expected_cain_probability(version, b)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cain_predict_left_padded_lifelong_lists_and_empty_history(target: Target) -> None:
    long = cain_instance(life=[(31, 1, 0.5), (32, -1, 1.5), (33, 1, 2.5), (34, 0, 3.5)])
    short = left_pad_lifelong(cain_instance(life=[(41, 1, 7.0), (42, -1, 0.75)]), 4)
    none = left_pad_lifelong(cain_instance(life=[]), 4)  # all padding
    assert short["life_item_id"] == [-1, -1, 41, 42] and short["life_order"] == [0, 0, 1, 2]
    for body, key in (
        ({"inputs": columnar(long, short, none)}, "outputs"),
        ({"instances": [long, short, none]}, "predictions"),
    ):
        reply = target.post(CAIN_PREDICT, body)
        assert reply.status_code == 200, reply.text
        want = [expected_cain_probability(2, inst) for inst in (long, short, none)]
        np.testing.assert_allclose(reply.json()[key], want, rtol=1e-5)
    empty = cain_instance(life=[])  # [1, 0] lifelong lists
    reply = target.post(CAIN_PREDICT, {"instances": [empty]})
    assert reply.status_code == 200, reply.text
    (prediction,) = reply.json()["predictions"]
    np.testing.assert_allclose(prediction, expected_cain_probability(2, empty), rtol=1e-5)
    # An empty history scores as an all-padding one, and not as a real one.
    np.testing.assert_allclose(prediction, expected_cain_probability(2, none), rtol=1e-5)
    assert not np.allclose(prediction, expected_cain_probability(2, long), rtol=1e-3)


def test_cain_scores_depend_on_every_lifelong_value(target: Target) -> None:
    """The reference (and the toy) see a dropped, swapped or changed lifelong event."""
    base = cain_instance()
    events = list(zip(*(base[n] for n in ("life_item_id", "life_polarity", "life_value")),
                      strict=True))
    variants = {
        "base": base,
        "dropped_oldest": cain_instance(life=events[1:]),
        "dropped_newest": cain_instance(life=events[:-1]),
        "swapped": cain_instance(life=[events[0], events[1], events[3], events[2]]),
        "value": {**base, "life_value": [0.5, 2.0, 1.25, 3.5]},
        "polarity": {**base, "life_polarity": [1, -1, 1, 1]},
        "item": {**base, "life_item_id": [101, 102, 106, 104]},
        "order": {**base, "life_order": [1, 2, 3, 5]},
    }
    padded = [left_pad_lifelong(inst, 4) for inst in variants.values()]
    reply = target.post(CAIN_PREDICT, {"inputs": columnar(*padded)})
    assert reply.status_code == 200, reply.text
    got = np.asarray(reply.json()["outputs"])
    want = [expected_cain_probability(2, inst) for inst in variants.values()]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    first = got[:, 0]
    assert len({round(float(x), 5) for x in first}) == len(variants), dict(zip(variants, first, strict=True))


def test_cain_lifelong_list_past_the_trained_length_keeps_the_most_recent(
    target: Target,
) -> None:
    events = [(200 + i, (-1) ** i, 0.5 * i) for i in range(LIFELONG_LENGTH + 3)]
    long = cain_instance(life=events)
    recent = cain_instance(life=events[3:])
    recent["life_order"] = long["life_order"][3:]
    replies = [target.post(CAIN_PREDICT, {"instances": [inst]}) for inst in (long, recent)]
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    got = [r.json()["predictions"][0] for r in replies]
    np.testing.assert_allclose(got[0], expected_cain_probability(2, long), rtol=1e-5)
    np.testing.assert_allclose(got[0], got[1], rtol=1e-6)


def test_cain_int_json_for_float_life_value(target: Target) -> None:
    ints = {**cain_instance(), "life_value": [1, -2, 0, 3]}
    floats = {**ints, "life_value": [1.0, -2.0, 0.0, 3.0]}
    for fmt, key in (("instances", "predictions"), ("inputs", "outputs")):
        replies = [
            target.post(
                CAIN_PREDICT,
                {"instances": [inst]} if fmt == "instances" else {"inputs": columnar(inst)},
            )
            for inst in (ints, floats)
        ]
        assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
        got = [r.json()[key] for r in replies]
        assert got[0] == got[1]
        np.testing.assert_allclose(got[0], [expected_cain_probability(2, floats)], rtol=1e-5)


def _cain_with(**changes: Any) -> dict:
    return {"instances": [{**cain_instance(), **changes}]}


def _cain_columnar(**changes: Any) -> dict:
    return {"inputs": {**columnar(cain_instance()), **changes}}


def _cain_without(key: str, fmt: str = "instances") -> dict:
    inst = {k: v for k, v in cain_instance().items() if k != key}
    return {"instances": [inst]} if fmt == "instances" else {"inputs": columnar(inst)}


CAIN_BAD_CASES = [
    # id, body, status, substrings of the error message (the field, and what is wrong)
    ("missing_life_value_row", _cain_without("life_value"), 400,
     ["keys must be equal to", "life_value"]),
    ("missing_life_value_columnar", _cain_without("life_value", "inputs"), 400,
     ["Missing named input: life_value"]),
    ("string_in_life_order_row", _cain_with(life_order=[1, "2", 3, 4]), 400,
     ["key: life_order", "is not of expected type: int64"]),
    ("float_in_life_polarity_row", _cain_with(life_polarity=[1, 0.5, 0, 1]), 400,
     ["key: life_polarity", "is not of expected type: int64"]),
    ("string_in_life_value_row", _cain_with(life_value=[0.5, "x", 1.0, 2.0]), 400,
     ["key: life_value", "is not of expected type: float"]),
    ("bool_in_life_value_row", _cain_with(life_value=[0.5, True, 1.0, 2.0]), 400,
     ["key: life_value", "is not of expected type: float"]),
    ("lifelong_lengths_differ_across_instances",
     {"instances": [cain_instance(), cain_instance(life=[(1, 1, 1.0)])]}, 400,
     ["key: life_item_id", "Expecting tensor size: 4 but got: 1"]),
    ("ragged_life_value", _cain_with(life_value=[0.5, 2.0, 1.25]), 400,
     ["life_item_id and life_value need the same shape"]),
    ("ragged_life_polarity", _cain_with(life_polarity=[1, -1, 0, 1, 1]), 400,
     ["life_item_id and life_polarity need the same shape"]),
    # Two orders for four ids: the order check's comparison broadcasts, so only the shape
    # check fails (see test_cain_ragged_life_order_error_names_the_field for other widths).
    ("ragged_life_order", _cain_with(life_order=[1, 2]), 400,
     ["life_item_id and life_order need the same shape"]),
    ("ragged_list_columnar", _cain_columnar(life_value=[[0.5, 2.0, 1.25]]), 400,
     ["life_item_id and life_value need the same shape"]),
    ("ragged_within_a_columnar_list", {"inputs": {
        **columnar(cain_instance(), cain_instance()), "life_value": [[1.0, 2.0, 3.0, 4.0], [1.0]]
    }}, 400, ["unexpected size"]),
    ("life_value_batch_differs", _cain_columnar(life_value=[[0.5, 2.0, 1.25, 3.0]] * 2), 400,
     ["life_value"]),
    ("not_left_padded", _cain_with(life_item_id=[101, -1, 103, 104]), 400,
     ["life_item_id is not left-padded"]),
    ("padding_last", _cain_with(life_item_id=[101, 102, 103, -1]), 400,
     ["life_item_id is not left-padded"]),
    ("repeated_life_order", _cain_with(life_order=[1, 3, 3, 4]), 400,
     ["life_order must increase strictly"]),
    ("decreasing_life_order", _cain_with(life_order=[4, 3, 2, 1]), 400,
     ["life_order must increase strictly"]),
    ("neg_history_not_left_padded", _cain_with(neg_item_id=[21, -1], neg_order=[1, 0]), 400,
     ["neg_item_id is not left-padded"]),
    ("item_category_per_candidate", _cain_with(item_category=[1, 2]), 400,
     ["item_category needs one value per candidate in item_id"]),
    ("empty_candidate_list", _cain_with(item_id=[], item_category=[]), 400,
     ["empty candidate list"]),
]


# The cases the JSON conversion lets through, refused by the graph's checks (one check
# fails in each, so the error does not depend on which assertion runs first).
CAIN_GRAPH_CASES = (
    "ragged_life_value", "ragged_life_polarity", "ragged_life_order", "ragged_list_columnar",
    "not_left_padded", "padding_last", "repeated_life_order", "decreasing_life_order",
    "neg_history_not_left_padded", "item_category_per_candidate", "empty_candidate_list",
)


@pytest.mark.parametrize(
    "body,status,messages", [c[1:] for c in CAIN_BAD_CASES], ids=[c[0] for c in CAIN_BAD_CASES]
)
def test_cain_bad_request(target: Target, body: Any, status: int, messages: list[str]) -> None:
    reply = target.post(CAIN_PREDICT, body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert isinstance(error, str) and error
    for message in messages:
        assert message in error
    cain_scores_unchanged(target)


def test_cain_wrong_dtype_in_a_lifelong_list_names_it_in_both_formats(target: Target) -> None:
    reply = target.post(CAIN_PREDICT, _cain_with(life_order=[1, 2, "three", 4]))
    assert reply.status_code == 400
    assert "life_order" in reply.json()["error"]
    reply = target.post(CAIN_PREDICT, _cain_columnar(life_order=[[1, 2, "three", 4]]))
    assert reply.status_code == 400
    if target.kind == "local":  # TF Serving does not name the input in columnar type errors
        assert "life_order" in reply.json()["error"]
    cain_scores_unchanged(target)


RAGGED_ORDER_WIDTHS = [0, 1, 3, 5, 7]  # life_order widths beside four life_item_id


@pytest.mark.parametrize("width", RAGGED_ORDER_WIDTHS)
def test_cain_ragged_life_order_of_any_width_is_400(target: Target, width: int) -> None:
    reply = target.post(CAIN_PREDICT, _cain_with(life_order=list(range(1, width + 1))))
    assert reply.status_code == 400, reply.text
    assert isinstance(reply.json()["error"], str)
    cain_scores_unchanged(target)


def test_cain_ragged_life_order_error_names_the_field(target: Target) -> None:
    """The order checks wait for the shape checks: a ragged list is always named (it
    was a race with an "Incompatible shapes" error before)."""
    for width in RAGGED_ORDER_WIDTHS:
        for _ in range(5):
            body = _cain_with(life_order=list(range(1, width + 1)))
            assert "life_order" in target.post(CAIN_PREDICT, body).json()["error"], width


def test_toy_cain_checks_say_what_the_real_export_says(toy_models: pathlib.Path) -> None:
    """The toy cain's signature and error messages are the real export's: the real
    `serving_default` (`tfnegseq.kinds.ctr.export.build_module` for a kind `cain`
    config, with a stub model and identity lookups) and the toy give the same inputs and,
    on each bad request of `CAIN_BAD_CASES` that reaches the graph, the same error."""
    import re

    import tensorflow as tf

    from tfnegseq.config import load_config
    from tfnegseq.kinds.ctr import export

    cfg = load_config(
        pathlib.Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml",
        [
            "model.kind=cain", f"samples.max_history={MAX_HISTORY}",
            f"model.sequence_length={MAX_HISTORY}", f"samples.lifelong_length={LIFELONG_LENGTH}",
            f"model.lifelong_length={LIFELONG_LENGTH}", "samples.user_features=[age]",
            "samples.item_features=[category]",
        ],
    )

    class Lookups(dict):
        def __missing__(self, vocab: str):
            return tf.identity

    class Processor:
        lookups = Lookups()
        max_lengths = {
            name: LIFELONG_LENGTH if name.startswith("life_") else MAX_HISTORY
            for name in export.serving_inputs(cfg)
        }

    class StubModel:
        variables: list = []

        def __call__(self, features: dict, training: bool = False) -> dict:
            return {"probability": tf.cast(features["item_id"], tf.float32)}

    real = export.build_module(StubModel(), Processor(), cfg).serve
    toy = tf.saved_model.load(str(toy_models / "cain" / "2")).signatures["serving_default"]
    (real_specs,) = real.input_signature
    toy_specs = toy.structured_input_signature[1]
    assert list(real_specs) == list(CAIN_INPUTS)
    assert {k: (s.dtype, s.shape.as_list()) for k, s in real_specs.items()} == {
        k: (s.dtype, s.shape.as_list()) for k, s in toy_specs.items()
    }

    def error(call, columns: dict) -> str | None:
        tensors = {
            k: tf.constant(v, real_specs[k].dtype, shape=np.shape(v)) for k, v in columns.items()
        }
        try:
            call(tensors)
        except tf.errors.InvalidArgumentError as e:
            found = re.search(r"assertion failed: \[([^\]]*)\]", e.message)
            return found.group(1) if found else e.message
        return None

    assert error(real, columnar(cain_instance())) is None
    assert error(lambda t: toy(**t), columnar(cain_instance())) is None
    cases = {c[0]: (c[1], c[3]) for c in CAIN_BAD_CASES}
    for name in CAIN_GRAPH_CASES:
        body, messages = cases[name]
        columns = body.get("inputs") or columnar(*body["instances"])
        want = error(real, columns)
        assert want is not None and all(m in want for m in messages), (name, want)
        assert error(lambda t: toy(**t), columns) == want, name


# --------------------------------------------------------------------------- lifecycle (local)


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_new_version_is_picked_up_and_removed_one_unloaded(
    toy_models: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from tfnegseq.serving.server import serve_in_thread

    base = tmp_path / "recommender"
    base.mkdir()
    copy_version(toy_models / "recommender" / "1", base, 1)
    inst = instance()
    with serve_in_thread(str(base), "recommender", file_system_poll_wait_seconds=0.2) as server:
        target = Target("local", server.url)

        def served_by(version: int) -> bool:
            reply = target.post(PREDICT, {"instances": [inst]})
            return bool(
                np.allclose(reply.json()["predictions"][0], expected(version, inst), rtol=1e-5)
            )

        assert served_by(1)
        copy_version(toy_models / "recommender" / "2", base, 2)
        _wait_for(lambda: served_by(2))
        states = {s["version"]: s["state"] for s in target.get(REC).json()["model_version_status"]}
        assert states == {"2": "AVAILABLE", "1": "END"}  # latest policy: v1 unloaded
        shutil.rmtree(base / "2")
        _wait_for(lambda: served_by(1))
        states = {s["version"]: s["state"] for s in target.get(REC).json()["model_version_status"]}
        assert states == {"2": "END", "1": "AVAILABLE"}


def test_sigterm_finishes_in_flight_request_and_exits_0(toy_models: pathlib.Path) -> None:
    port = free_port()
    # 800k examples: above the default --max_examples, raised for this test
    args = ["--model_config_file", str(toy_models / "models.config"),
            "--max_examples", "1000000"]
    with server_subprocess(args, port) as proc:
        # A big batch keeps the server busy (parsing, converting) for a while.
        batch = [instance(user_id=i, candidates=list(range(200))) for i in range(4000)]
        payload = json.dumps({"instances": batch}).encode()
        head = (
            f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(head.encode() + payload)
            time.sleep(0.5)  # the server has the request; it needs about 2 s for it
            proc.send_signal(signal.SIGTERM)
            status_line = sock.makefile("rb").readline()
        assert status_line.startswith(b"HTTP/1.1 200"), status_line
        assert proc.wait(timeout=60) == 0


# --------------------------------------------------------------------------- parity (real)


@pytest.mark.skipif(not REAL_URL, reason=NO_REAL_SERVER)
def test_local_server_answers_like_tf_serving(local_server) -> None:
    """Same statuses, replies and (for good requests) values from both servers."""
    local, real = (
        Target("local", local_server.url),
        Target("tf_serving", (REAL_URL or "").rstrip("/")),
    )
    for path in (REC, f"{REC}/versions/1", f"{REC}/labels/canary", "/v1/models/other"):
        assert local.get(path).json() == real.get(path).json()
    for path in (f"{REC}/metadata", f"{REC}/labels/stable/metadata"):
        local_meta, real_meta = local.get(path).json(), real.get(path).json()
        assert local_meta["model_spec"] == real_meta["model_spec"]
        local_sigs = local_meta["metadata"]["signature_def"]["signature_def"]
        real_sigs = real_meta["metadata"]["signature_def"]["signature_def"]
        for key in ("serving_default", "score_examples"):
            for part in ("inputs", "outputs", "method_name"):
                assert local_sigs[key][part] == real_sigs[key][part], (key, part)
    bodies = [GOOD, {"inputs": columnar(instance(), instance(candidates=[4, 5, 6, 7]))}]
    for path in (PREDICT, f"{REC}/versions/1:predict", f"{REC}/labels/stable:predict"):
        for body in bodies:
            a, b = local.post(path, body), real.post(path, body)
            assert a.status_code == b.status_code == 200
            key = "predictions" if "instances" in body else "outputs"
            np.testing.assert_allclose(a.json()[key], b.json()[key], rtol=1e-6)
    for case in BAD_CASES:
        _, method, path, body, status, _ = case
        data = (
            None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        got = [
            requests.request(method, t.url + path, data=data, timeout=30).status_code
            for t in (local, real)
        ]
        assert got == [status, status], case[0]
    local_cain = local.get(f"{CAIN}/metadata").json()["metadata"]["signature_def"]
    real_cain = real.get(f"{CAIN}/metadata").json()["metadata"]["signature_def"]
    for part in ("inputs", "outputs", "method_name"):
        assert (
            local_cain["signature_def"]["serving_default"][part]
            == real_cain["signature_def"]["serving_default"][part]
        ), part
    no_history = left_pad_lifelong(cain_instance(life=[]), 4)
    for body in (CAIN_GOOD, {"inputs": columnar(cain_instance(), no_history)}):
        a, b = local.post(CAIN_PREDICT, body), real.post(CAIN_PREDICT, body)
        assert a.status_code == b.status_code == 200
        key = "predictions" if "instances" in body else "outputs"
        np.testing.assert_allclose(a.json()[key], b.json()[key], rtol=1e-6)
    for name, body, status, _ in CAIN_BAD_CASES:
        assert [t.post(CAIN_PREDICT, body).status_code for t in (local, real)] == [
            status,
            status,
        ], name


# --------------------------------------------------------------------------- proto JSON


def test_status_reply_is_tf_serving_proto_json(target: Target) -> None:
    """The reply parses as GetModelStatusResponse and prints back identically."""
    status_pb2 = pytest.importorskip("tensorflow_serving.apis.get_model_status_pb2")
    from google.protobuf import json_format

    reply = target.get(REC).json()
    message = json_format.ParseDict(reply, status_pb2.GetModelStatusResponse())
    assert json_format.MessageToDict(message, always_print_fields_with_no_presence=True) == reply


def test_broken_version_is_reported_and_others_keep_serving(
    toy_models: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from tfnegseq.serving.server import serve_in_thread

    base = tmp_path / "recommender"
    base.mkdir()
    copy_version(toy_models / "recommender" / "1", base, 1)
    (base / "3").mkdir()
    (base / "3" / "saved_model.pb").write_bytes(b"not a protobuf")
    with serve_in_thread(
        str(base), "recommender", model_version_policy="all", file_system_poll_wait_seconds=0
    ) as server:
        target = Target("local", server.url)
        rows = {s["version"]: s for s in target.get(REC).json()["model_version_status"]}
        assert rows["1"]["state"] == "AVAILABLE"
        assert rows["3"]["state"] == "END" and rows["3"]["status"]["error_code"] != "OK"
        reply = target.post(PREDICT, {"instances": [instance()]})
        np.testing.assert_allclose(
            reply.json()["predictions"][0], expected(1, instance()), rtol=1e-5
        )
        assert target.post(f"{REC}/versions/3:predict", GOOD).status_code == 404


# --------------------------------------------------------------------------- hostile (local)


OTHER_PREDICT = "/v1/models/other:predict"


@pytest.mark.parametrize(
    "path,body",
    [
        (PREDICT, {"instances": [{**instance(), "item_id": nested(1, 65)}]}),
        (PREDICT, {"instances": [{**instance(), "item_id": nested(1, 64)}]}),
        (PREDICT, {"inputs": {**columnar(instance()), "item_id": nested(1, 65)}}),
        (OTHER_PREDICT, {"instances": [nested(1.0, 65)]}),
        (OTHER_PREDICT, {"inputs": nested(1.0, 500)}),
    ],
    ids=["row_65", "row_64", "columnar_65", "plain_list_65", "columnar_500"],
)
def test_json_nested_past_numpy_dimension_limit_is_400(
    target: Target, path: str, body: dict
) -> None:
    target.local_only("the 64-dimension limit is the local server's (numpy's)")
    reply = target.post(path, body)
    assert reply.status_code == 400, reply.text
    assert "at most 64 dimensions" in reply.json()["error"]
    target.assert_healthy()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP"])
@pytest.mark.parametrize("padding", [0, LOCAL_MAX_BODY_BYTES // 2], ids=["small", "big"])
def test_content_encoding_with_a_body_not_so_encoded_is_400(
    target: Target, encoding: str, padding: int
) -> None:
    target.local_only("TF Serving's answer to a corrupt compressed body is not checked here")
    body = json.dumps({**GOOD, "padding": "x" * padding}).encode()
    status, headers, data = raw_request(
        target.url, "POST", PREDICT, body, {"Content-Encoding": encoding}
    )
    assert status == 400, data
    assert headers["Content-Type"].startswith("application/json")
    assert "Content-Encoding" in json.loads(data)["error"]
    target.assert_healthy()


@pytest.mark.parametrize("encoding", ["br", "zstd"])
def test_content_encoding_the_server_cannot_decode_is_415(target: Target, encoding: str) -> None:
    target.local_only("TF Serving decodes gzip only")
    status, _, data = raw_request(
        target.url, "POST", PREDICT, json.dumps(GOOD).encode(), {"Content-Encoding": encoding}
    )
    assert status == 415, data
    assert encoding in json.loads(data)["error"]
    target.assert_healthy()


def test_gzip_body_is_decoded(target: Target) -> None:
    import gzip

    inst = instance()
    status, _, data = raw_request(
        target.url,
        "POST",
        PREDICT,
        gzip.compress(json.dumps({"instances": [inst]}).encode()),
        {"Content-Encoding": "gzip"},
    )
    assert status == 200, data
    np.testing.assert_allclose(json.loads(data)["predictions"][0], expected(2, inst), rtol=1e-5)


@pytest.mark.parametrize("method", ["CONNECT", "get", "Post", "TRACE", "FOO", "PROPFIND"])
def test_methods_outside_the_allowed_set_are_405_with_a_json_error(
    target: Target, method: str
) -> None:
    target.local_only("libevent answers 400 / 501 with HTML to methods outside its set")
    status, headers, data = raw_request(target.url, method, REC)
    assert status == 405, (status, data)
    assert headers["Content-Type"].startswith("application/json")
    assert method in json.loads(data)["error"]
    assert set(headers["Allow"].split(", ")) >= {"GET", "POST"}
    target.assert_healthy()
