"""Toy SavedModels with the recommender's serving signatures, and servers over them.

The toy `recommender` has the real export's `serving_default` signature (`user_id`,
`pos_item_id`, `pos_order`, `neg_item_id`, `neg_order`, `item_id`, `user_age` ->
`probability` [B, C], with tf.debugging asserts for "pos_item_id is not left-padded"
and "empty candidate list", as the real export has) and `score_examples` (serialized tf.Example -> [B]).
Versions 1 and 2 differ in weight and bias; `expected_probability` is the numpy
reference. `other` has one float input and two outputs. The real export
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


def export_toy_models(root: pathlib.Path, container_root: str | None = None) -> pathlib.Path:
    """Writes `recommender/{1,2}`, `other/1` and `models.config` under `root`.

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
        if version == 1:
            tf.saved_model.save(
                other, str(root / "other" / "1"), signatures={"serving_default": other.serve}
            )
    base = container_root or str(root)
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        "  config {\n"
        f'    name: "recommender"\n    base_path: "{base}/recommender"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy { all {} }\n"
        '    version_labels { key: "stable" value: 1 }\n'
        '    version_labels { key: "canary" value: 2 }\n'
        "  }\n"
        "  config {\n"
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
