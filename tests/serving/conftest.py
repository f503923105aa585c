"""Toy SavedModels with the recommender's serving signatures, and servers over them.

The toy `recommender` has the real export's `serving_default` signature (`user_id`,
`pos_item_id`, `pos_order`, `neg_item_id`, `neg_order`, `item_id`, `user_age` ->
`probability` [B, C], with tf.debugging asserts for "pos_item_id is not left-padded"
and "empty candidate list", as the real export has) and `score_examples` (serialized tf.Example -> [B]).
Versions 1 and 2 differ in weight and bias; `expected_probability` is the numpy
reference. The toy `cain` (versions 1 and 2 too) has the real CAIN export's
`serving_default` (model kind `cain`, `tfnegseq.kinds.ctr.export`): the CTR inputs (with
the candidate side feature `item_category`) plus the lifelong lists `life_item_id`,
`life_order`, `life_polarity` (int64 [B, N]) and `life_value` (float32 [B, N]), and the
same `tf.debugging` checks with the same messages (empty candidate list, batch sizes,
one value per candidate, and for `pos` / `neg` / `life`: one shape per history,
left-padded, strictly increasing orders); each history keeps its most recent
`MAX_HISTORY` / `LIFELONG_LENGTH` entries, as the real export does.
`expected_cain_probability` is its numpy reference. `other` has one float input and two
outputs. The real export
(`tfnegseq.export`, profile inputs `user_<f>` and candidate side inputs `item_<f>` named
by the config) is served through the local server by
`tests/test_export.py::test_rest_score_equals_keras_through_the_local_server`.

Run as a script to export the same models for a real TF Serving (see
`serving/README.md`): `python tests/serving/conftest.py EXPORT_DIR [--container_root /models]`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import requests

from tfnegseq.serving.server import stop_gracefully

MAX_HISTORY = 8
LIFELONG_LENGTH = 6  # the toy cain's N: a longer lifelong list keeps its most recent N
LIFELONG = ("life_item_id", "life_order", "life_polarity", "life_value")
VERSIONS = {1: (1.0, 0.0), 2: (2.0, 0.5)}  # version -> (weight, bias)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _toy_modules(weight: float, bias: float):  # -> (recommender, other)
    import tensorflow as tf

    i64 = tf.int64

    class Recommender(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = tf.Variable(weight, dtype=tf.float32)
            self.bias = tf.Variable(bias, dtype=tf.float32)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], i64, name="user_id"),
                tf.TensorSpec([None, None], i64, name="pos_item_id"),
                tf.TensorSpec([None, None], i64, name="pos_order"),
                tf.TensorSpec([None, None], i64, name="neg_item_id"),
                tf.TensorSpec([None, None], i64, name="neg_order"),
                tf.TensorSpec([None, None], i64, name="item_id"),
                tf.TensorSpec([None], i64, name="user_age"),
            ]
        )
        def serve(self, user_id, pos_item_id, pos_order, neg_item_id, neg_order, item_id, user_age):
            checks = [
                tf.debugging.assert_equal(
                    tf.reduce_any(tf.logical_and(pos_item_id[:, :-1] >= 0,
                                                 pos_item_id[:, 1:] < 0)),
                    False,
                    message="pos_item_id is not left-padded",
                ),
                tf.debugging.assert_greater_equal(
                    tf.shape(item_id)[1], 1, message="empty candidate list"
                ),
            ]
            with tf.control_dependencies(checks):
                n_pos = tf.reduce_sum(tf.cast(pos_item_id >= 0, tf.float32), axis=1)  # [B]
                n_neg = tf.reduce_sum(tf.cast(neg_item_id >= 0, tf.float32), axis=1)  # [B]
                candidate = tf.cast(tf.math.floormod(item_id, 7), tf.float32) / 7.0  # [B, C]
                user = 0.1 * (n_pos - n_neg) + 0.01 * tf.cast(user_age, tf.float32)  # [B]
                user += 0.0 * tf.cast(
                    user_id + tf.reduce_sum(pos_order) + tf.reduce_sum(neg_order), tf.float32
                )
                logit = self.weight * candidate + user[:, None] + self.bias  # [B, C]
            return {"probability": tf.sigmoid(logit)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def score_examples(self, examples):
            spec = {
                "user_id": tf.io.FixedLenFeature([], i64),
                "item_id": tf.io.FixedLenFeature([], i64),
            }
            features = tf.io.parse_example(examples, spec)
            candidate = tf.cast(tf.math.floormod(features["item_id"], 7), tf.float32) / 7.0
            return {"probability": tf.sigmoid(self.weight * candidate + self.bias)}  # [B]

    class Other(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"total": tf.reduce_sum(x, axis=1), "double": 2.0 * x}

    return Recommender(), Other()


PAD_ID = -1  # tfnegseq.schema.PAD_ID




# The toy cain's `serving_default` inputs in the real export's order (`serving_inputs`):
# name -> kind ("user" [B], "history" [B, N], "candidate" [B, C]).
CAIN_INPUTS = {
    "user_id": "user",
    "pos_item_id": "history",
    "pos_order": "history",
    "neg_item_id": "history",
    "neg_order": "history",
    **{name: "history" for name in LIFELONG},
    "item_id": "candidate",
    "user_age": "user",
    "item_category": "candidate",
}
CAIN_MAX_LENGTHS = {
    **{f"{p}_{s}": MAX_HISTORY for p in ("pos", "neg") for s in ("item_id", "order")},
    **{name: LIFELONG_LENGTH for name in LIFELONG},
}


def _toy_cain(weight: float, bias: float):  # -> cain
    import tensorflow as tf

    from tfnegseq.kinds.ctr.export import request_checks

    specs = {
        name: tf.TensorSpec(
            [None] if kind == "user" else [None, None],
            tf.float32 if name == "life_value" else tf.int64,
            name=name,
        )
        for name, kind in CAIN_INPUTS.items()
    }

    class Cain(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = tf.Variable(weight, dtype=tf.float32)
            self.bias = tf.Variable(bias, dtype=tf.float32)

        @tf.function(input_signature=[specs], autograph=False)
        def serve(self, features):
            candidates = features["item_id"]  # [B, C]
            # the real export's assertions, traced into the toy's graph
            checks = request_checks(features, CAIN_INPUTS, ("pos", "neg", "life"))
            with tf.control_dependencies(checks):
                x = {
                    name: tf.identity(t)[:, -CAIN_MAX_LENGTHS[name]:]
                    if name in CAIN_MAX_LENGTHS else tf.identity(t)
                    for name, t in features.items()
                }  # the most recent MAX_HISTORY / LIFELONG_LENGTH entries, as the export
                n_pos = tf.reduce_sum(tf.cast(x["pos_item_id"] != PAD_ID, tf.float32), axis=1)
                n_neg = tf.reduce_sum(tf.cast(x["neg_item_id"] != PAD_ID, tf.float32), axis=1)
                ids = x["life_item_id"]  # [B, N]
                width = tf.shape(ids)[1]
                recency = tf.cast(tf.range(width - 1, -1, -1), tf.float32)  # 0: most recent
                entry = (
                    tf.cast(x["life_polarity"], tf.float32) * x["life_value"]
                    + tf.cast(tf.math.floormod(ids, 5), tf.float32) / 5.0
                    + tf.cast(tf.math.floormod(x["life_order"], 4), tf.float32) / 4.0
                ) / (1.0 + recency)  # [B, N]
                life = tf.reduce_sum(tf.where(ids != PAD_ID, entry, 0.0), axis=1)  # [B]
                user = (
                    0.1 * (n_pos - n_neg)
                    + 0.1 * life
                    + 0.01 * tf.cast(x["user_age"], tf.float32)
                    + 0.0 * tf.cast(
                        x["user_id"] + tf.reduce_sum(x["pos_order"]) + tf.reduce_sum(x["neg_order"]),
                        tf.float32,
                    )
                )  # [B]
                candidate = (
                    tf.cast(tf.math.floormod(candidates, 7), tf.float32) / 7.0
                )  # [B, C]
                side = 0.05 * tf.cast(tf.math.floormod(x["item_category"], 3), tf.float32)
                logit = self.weight * candidate + side + user[:, None] + self.bias  # [B, C]
            return {"probability": tf.sigmoid(logit)}

    return Cain()


def export_toy_models(root: pathlib.Path, container_root: str | None = None) -> pathlib.Path:
    """Writes `recommender/{1,2}`, `cain/{1,2}`, `other/1` and `models.config` under `root`.

    Args:
        root: where to write.
        container_root: base path the config should name (where a TF Serving
            container mounts `root`); defaults to `root` itself.

    Returns:
        The path of `models.config`.
    """
    import tensorflow as tf

    for version, (weight, bias) in VERSIONS.items():
        recommender, other = _toy_modules(weight, bias)
        signatures = {
            "serving_default": recommender.serve,
            "score_examples": recommender.score_examples,
        }
        tf.saved_model.save(
            recommender, str(root / "recommender" / str(version)), signatures=signatures
        )
        cain = _toy_cain(weight, bias)
        tf.saved_model.save(
            cain, str(root / "cain" / str(version)), signatures={"serving_default": cain.serve}
        )
        if version == 1:
            tf.saved_model.save(
                other, str(root / "other" / "1"), signatures={"serving_default": other.serve}
            )
    base = container_root or str(root)
    config = root / "models.config"
    labelled = "".join(  # every version served, labels stable -> 1, canary -> 2
        "  config {\n"
        f'    name: "{name}"\n    base_path: "{base}/{name}"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy { all {} }\n"
        '    version_labels { key: "stable" value: 1 }\n'
        '    version_labels { key: "canary" value: 2 }\n'
        "  }\n"
        for name in ("recommender", "cain")
    )
    config.write_text(
        "model_config_list {\n"
        + labelled
        + "  config {\n"
        f'    name: "other"\n    base_path: "{base}/other"\n    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )
    return config


def expected_probability(
    version: int,
    pos_items: Sequence[int],
    neg_items: Sequence[int],
    candidates: Sequence[int],
    user_age: int = 0,
) -> np.ndarray:
    """Numpy reference of the toy `serving_default` for one instance (-1 = padding)."""
    weight, bias = VERSIONS[version]
    n_pos = sum(1 for i in pos_items if i >= 0)
    n_neg = sum(1 for i in neg_items if i >= 0)
    logit = weight * (np.mod(candidates, 7) / 7.0) + 0.1 * (n_pos - n_neg) + 0.01 * user_age + bias
    return 1.0 / (1.0 + np.exp(-logit))


def instance(
    user_id: int = 7,
    pos: Sequence[int] = (11, 12, 13),
    neg: Sequence[int] = (21,),
    candidates: Sequence[int] = (1, 2, 3, 4),
    user_age: int = 30,
) -> dict:
    """A valid row-format instance of the toy recommender."""
    return {
        "user_id": user_id,
        "pos_item_id": list(pos),
        "pos_order": list(range(1, len(pos) + 1)),
        "neg_item_id": list(neg),
        "neg_order": list(range(1, len(neg) + 1)),
        "item_id": list(candidates),
        "user_age": user_age,
    }


def cain_instance(
    user_id: int = 7,
    pos: Sequence[int] = (11, 12, 13),
    neg: Sequence[int] = (21,),
    life: Sequence[tuple[int, int, float]] = ((101, 1, 0.5), (102, -1, 2.0), (103, 0, 1.25),
                                              (104, 1, 3.0)),
    candidates: Sequence[int] = (1, 2, 3, 4),
    user_age: int = 30,
) -> dict:
    """A valid row-format instance of the toy cain: `life` is (item, polarity, value)
    per lifelong event, oldest first, with orders 1, 2, ...; `item_category` of
    candidate c is 3 c + 1."""
    return {
        **instance(user_id, pos, neg, candidates, user_age),
        "life_item_id": [item for item, _, _ in life],
        "life_order": list(range(1, len(life) + 1)),
        "life_polarity": [polarity for _, polarity, _ in life],
        "life_value": [value for _, _, value in life],
        "item_category": [3 * c + 1 for c in candidates],
    }


def left_pad_lifelong(inst: dict, width: int) -> dict:
    """`inst` with its lifelong lists left-padded to `width` (-1 ids, 0 elsewhere)."""
    out = dict(inst)
    for name in LIFELONG:
        pad = PAD_ID if name == "life_item_id" else 0.0 if name == "life_value" else 0
        out[name] = [pad] * (width - len(inst[name])) + list(inst[name])
    return out


def expected_cain_probability(version: int, inst: dict) -> np.ndarray:
    """Numpy reference of the toy cain's `serving_default` for one row-format instance
    (-1 ids = padding): each history cut to its most recent `MAX_HISTORY` /
    `LIFELONG_LENGTH` entries, then every real lifelong event adds
    `(polarity * value + id % 5 / 5 + order % 4 / 4) / (1 + recency)` (recency 0 for
    the most recent) to the user's logit, times 0.1."""
    weight, bias = VERSIONS[version]

    def recent(name: str) -> list:
        return list(inst[name])[-CAIN_MAX_LENGTHS[name]:]

    n_pos = sum(1 for i in recent("pos_item_id") if i != PAD_ID)
    n_neg = sum(1 for i in recent("neg_item_id") if i != PAD_ID)
    life = 0.0
    events = zip(*(reversed(recent(name)) for name in LIFELONG), strict=True)
    for recency, (item, order, polarity, value) in enumerate(events):
        if item != PAD_ID:
            entry = polarity * float(np.float32(value)) + item % 5 / 5 + order % 4 / 4
            life += entry / (1 + recency)
    candidates = np.asarray(inst["item_id"])
    logit = (
        weight * (np.mod(candidates, 7) / 7.0)
        + 0.05 * np.mod(np.asarray(inst["item_category"]), 3)
        + 0.1 * (n_pos - n_neg)
        + 0.1 * life
        + 0.01 * inst["user_age"]
        + bias
    )
    return 1.0 / (1.0 + np.exp(-logit))


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, model: str = "recommender", timeout: float = 90.0) -> None:
    """Polls the model status until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/v1/models/{model}", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not healthy after {timeout}s")


def raw_request(
    url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Sends one request on a fresh connection exactly as given (method case and all,
    which `requests` would upper-case); returns (status, headers, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def nested(value: object, depth: int) -> object:
    """`value` inside `depth` one-element lists."""
    for _ in range(depth):
        value = [value]
    return value


@contextlib.contextmanager
def server_subprocess(args: Sequence[str], port: int) -> Iterator[subprocess.Popen]:
    """Runs `python -m tfnegseq.serving.server ARGS --port PORT` until healthy."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [PYTHON, "-m", "tfnegseq.serving.server", *args, "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        yield proc
    finally:
        stop_gracefully(proc)


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Directory with the toy models and their `models.config`."""
    root = tmp_path_factory.mktemp("toy_models")
    export_toy_models(root)
    return root


LOCAL_MAX_BODY_BYTES = 1 << 20


@pytest.fixture(scope="session")
def local_server(toy_models: pathlib.Path):
    """The local server over the toy models, on a free loopback port, in a thread."""
    from tfnegseq.serving.server import serve_in_thread

    with serve_in_thread(
        model_config_file=str(toy_models / "models.config"),
        max_body_bytes=LOCAL_MAX_BODY_BYTES,
        file_system_poll_wait_seconds=0,
    ) as server:
        yield server


def copy_version(src: pathlib.Path, dst_base: pathlib.Path, version: int) -> None:
    """Copies a version directory atomically (copy to a temp name, then rename)."""
    tmp = dst_base / f".tmp-{version}"
    shutil.copytree(src, tmp)
    os.rename(tmp, dst_base / str(version))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Export the toy models for TF Serving.")
    parser.add_argument("export_dir", type=pathlib.Path)
    parser.add_argument("--container_root", default=None, help="where the container mounts it")
    cli = parser.parse_args()
    cli.export_dir.mkdir(parents=True, exist_ok=True)
    print(export_toy_models(cli.export_dir, cli.container_root))
