"""Export of the `sequential` kind: `score` and `retrieve` equal the Keras model.

A tiny KuaiRec-layout log -> the Beam job (`samples.task: sequential`) -> one short SINE
epoch with `train.export: true` (`tfnegseq.export.export_run`; retrieval in chunks of 4
items, the loop a DIN export runs), and the same for SASRec, GRU4Rec and DIN. The reference is the
reloaded `model.keras`, called on ids looked up in numpy (`Vocabulary.lookup_numpy`),
histories cut to the last `max_length` and left-padded in numpy; retrieval's reference
ranks the whole catalogue in numpy (the user's positives left out, stable sort: ties go
to the lower row, as `tf.math.top_k`). The SavedModel runs in a fresh interpreter where
`keras` and `tfnegseq` cannot be imported, and behind the local REST server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import requests

MAX_LENGTH = 6
K = 5
OOV_ID = 10**12  # not in the vocabulary: an OOV row, never retrieved nor excluded


@dataclasses.dataclass
class Run:
    cfg: Any
    version_dir: str
    histories: list[tuple[list[int], list[int]]]  # (positives, negatives) per user
    model: Any
    vocab: Any


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> tuple[pathlib.Path, list]:
    """A tiny log turned into sequential samples; (root, the users' histories)."""
    from tests.helpers_data import write_log
    from tests.helpers_export import read_examples
    from tfnegseq.data import job
    from tfnegseq.kinds.sequential.export import example_history, parse_samples

    root = tmp_path_factory.mktemp("export_sequential")
    write_log(root / "log", np.random.default_rng(3), users=16, per_user=40)
    cfg = make_cfg(root, "sine")
    job.run(cfg)
    parsed = parse_samples(read_examples(cfg.output.dir, "sequences"), cfg)
    return root, [example_history(s, cfg.model.negative_rule) for s in parsed]


def make_cfg(root: pathlib.Path, architecture: str, **model: Any) -> Any:
    from tfnegseq.config import config_from_dict

    return config_from_dict({
        "name": architecture,
        "source": {"kind": "kuairec", "path": str(root / "log")},
        "rules": {"label": [], "positive": ["watch_ratio >= 2.0"],
                  "negative": ["watch_ratio < 0.5"]},
        "samples": {"task": "sequential", "min_core": 1, "max_sequence": 50},
        "output": {"dir": str(root / "samples"), "shards": 1},
        "vocab": {"min_count": 1, "oov_buckets": 2},
        "model": {"kind": "sequential", "architecture": architecture, "embedding_dim": 8,
                  "max_length": MAX_LENGTH, "num_blocks": 1, "num_heads": 1,
                  "num_interests": 2, "dropout": 0.0, "retrieve_k": K,
                  "attention_units": [8], "mlp_units": [8], **model},
        "train": {"epochs": 1, "batch_size": 4, "eval_split": "test", "jit_compile": False,
                  "run_dir": str(root / f"run_{architecture}"), "export": True},
    })


def train_run(samples, architecture: str, **model: Any) -> Run:
    """One short epoch of `architecture` with `train.export: true` (`export_run`)."""
    import keras

    from tfnegseq import train
    from tfnegseq.data.vocab import Vocabulary
    from tfnegseq.runs import run_data_dir

    root, histories = samples
    cfg = make_cfg(root, architecture, **model)
    metrics = train.run_config(cfg, verbose=0)
    model_ = keras.saving.load_model(os.path.join(cfg.train.run_dir, "model.keras"),
                                     compile=False)
    vocab = Vocabulary.load(run_data_dir(cfg.train.run_dir), "item_id", cfg.vocab)
    return Run(cfg, metrics["export"], histories, model_, vocab)


@pytest.fixture(scope="module")
def run(samples) -> Run:
    """SINE; retrieval scans the catalogue 4 items at a time (the chunked loop)."""
    return train_run(samples, "sine", rank_chunk_size=4)


# --------------------------------------------------------------------------- reference


def batch(histories: list[tuple[list[int], list[int]]]) -> dict[str, list]:
    """`pos_item_id` / `neg_item_id` left-padded with -1 to the longest, as a client does."""
    width = max(len(p) for p, _ in histories)
    return {
        name: [[-1] * (width - len(h[i])) + list(h[i]) for h in histories]
        for i, name in ((0, "pos_item_id"), (1, "neg_item_id"))
    }


def keras_scores(r: Run, histories, candidate_rows: np.ndarray) -> np.ndarray:
    """The model's `candidate_scores` [B, C] for raw histories and candidate rows."""
    def rows(values: list[int]) -> list[int]:
        kept = list(values)[len(values) - min(len(values), MAX_LENGTH):]
        return list(r.vocab.lookup_numpy(np.asarray([-1] * (MAX_LENGTH - len(kept)) + kept)))

    inputs = np.asarray([rows(p) for p, _ in histories], np.int64)
    negatives = np.asarray([rows(n) for _, n in histories], np.int64)
    cands = np.asarray(candidate_rows, np.int64)
    out = r.model({"inputs": inputs, "input_negatives": negatives, "target": cands[:, 0],
                   "candidates": cands}, training=False)
    return np.asarray(out["candidate_scores"], np.float64)


def keras_score(r: Run, histories, candidates: list[list[int]]) -> np.ndarray:
    return keras_scores(r, histories, r.vocab.lookup_numpy(np.asarray(candidates)))


def keras_retrieve(r: Run, histories) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [B, K], scores [B, K], catalogue scores [B, N], excluded = -inf) in numpy:
    every catalogue row scored (7 rows per model call), the user's positives removed."""
    start = 1 + r.cfg.vocab.oov_buckets
    rows = np.arange(start, start + len(r.vocab.ids))
    parts = [keras_scores(r, histories, np.tile(rows[i:i + 7], (len(histories), 1)))
             for i in range(0, len(rows), 7)]
    scores = np.concatenate(parts, axis=1)  # [B, N]
    for b, (pos, _) in enumerate(histories):
        seen = r.vocab.lookup_numpy(np.asarray(pos, np.int64)) - start
        scores[b, seen[(seen >= 0) & (seen < len(rows))]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return r.vocab.ids[order], np.take_along_axis(scores, order, axis=1), scores


def check_retrieved(r: Run, histories, ids, scores) -> None:
    want_ids, want_scores, full = keras_retrieve(r, histories)
    ids, scores = np.asarray(ids, np.int64), np.asarray(scores, np.float64)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # the returned ids are the top K: their reference scores are the returned ones, and
    # the ids equal the reference's wherever no near-tie allows another order
    index = {int(i): n for n, i in enumerate(r.vocab.ids)}
    got = np.take_along_axis(full, np.vectorize(index.get)(ids), axis=1)
    np.testing.assert_allclose(got, scores, rtol=1e-5, atol=1e-5)
    gaps = np.abs(np.diff(np.sort(full, axis=1)[:, ::-1][:, :K + 1], axis=1))
    clear = (gaps > 1e-4).all(axis=1)
    assert clear.any(), "every row has a near-tie: the id check would be vacuous"
    np.testing.assert_array_equal(ids[clear], want_ids[clear])


def cases(r: Run) -> dict[str, list[tuple[list[int], list[int]]]]:
    longest = max(r.histories, key=lambda h: len(h[0]))
    assert len(longest[0]) > MAX_LENGTH  # truncation is exercised
    short = next(h for h in r.histories if len(h[0]) >= 3 and any(n >= 0 for n in h[1]))
    oov = ([*short[0][-2:], OOV_ID], [*short[1][-2:], -1])
    return {
        "one": [longest],
        "mixed": [short, (short[0][-2:], short[1][-2:]), ([], []), oov],
    }


# --------------------------------------------------------------------------- tests

TF_ONLY_SCRIPT = r"""
import json, sys
sys.modules["keras"] = None      # `import keras` now raises ImportError
sys.modules["tfnegseq"] = None
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

model_dir, spec_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
loaded = tf.saved_model.load(model_dir)

def call(name, batch):
    fn = loaded.signatures[name]
    res = fn(**{k: tf.constant(v, tf.int64, shape=np.shape(v)) for k, v in batch.items()})
    return {k: v.numpy().tolist() for k, v in res.items()}

out = {"signatures": sorted(loaded.signatures), "calls": [], "errors": {}}
for name, batch in spec["calls"]:
    out["calls"].append(call(name, batch))
for key, (name, batch) in spec["bad"].items():
    try:
        call(name, batch)
        out["errors"][key] = None
    except tf.errors.InvalidArgumentError as e:
        out["errors"][key] = e.message

proto = saved_model_pb2.SavedModel()
with open(model_dir + "/saved_model.pb", "rb") as f:
    proto.ParseFromString(f.read())
graph = proto.meta_graphs[0]
functions = {fn.signature.name for fn in graph.graph_def.library.function}
ops = {n.op for n in graph.graph_def.node}
xla = False
for fn in graph.graph_def.library.function:
    ops |= {n.op for n in fn.node_def}
    xla |= any(k.startswith("_Xla") and v.b for n in fn.node_def for k, v in n.attr.items())
ops -= functions
out["unregistered"] = sorted(o for o in ops if op_def_registry.get(o) is None)
out["xla"] = bool(xla)
out["imported"] = sorted(
    k for k, v in sys.modules.items() if v is not None and k.split(".")[0] in ("keras", "tfnegseq"))

from tensorflow_serving.apis import prediction_log_pb2  # protos only; after the module check
out["warmup"] = []
for rec in tf.data.TFRecordDataset(model_dir + "/assets.extra/tf_serving_warmup_requests"):
    request = prediction_log_pb2.PredictionLog.FromString(rec.numpy()).predict_log.request
    fn = loaded.signatures[request.model_spec.signature_name]
    res = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
    out["warmup"].append([request.model_spec.name, request.model_spec.signature_name,
                          list(res["score"].shape)])
json.dump(out, open(out_path, "w"))
"""


def run_tf_only(version_dir: str, spec: dict[str, Any], tmp_path: pathlib.Path) -> dict:
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "check.py").write_text(TF_ONLY_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "check.py"), version_dir, str(tmp_path / "spec.json"),
         str(tmp_path / "out.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp_path / "out.json").read_text())


def bad_requests(first: dict[str, list]) -> dict[str, tuple[str, dict]]:
    return {
        "not_left_padded": ("retrieve", {"pos_item_id": [[5, -1]], "neg_item_id": [[-1, -1]]}),
        "negative_at_padding": ("retrieve", {"pos_item_id": [[-1, 5]], "neg_item_id": [[7, -1]]}),
        "negative_shape": ("retrieve", {"pos_item_id": [[5, 6]], "neg_item_id": [[-1]]}),
        "empty_candidates": ("score", {**first, "item_id": [[]]}),
    }


def test_signatures_match_keras_in_a_tensorflow_only_process(run, tmp_path):
    catalogue = [int(i) for i in run.vocab.ids]
    calls, refs = [], []
    for histories in cases(run).values():
        inputs = batch(histories)
        candidates = [catalogue[b % 3::4][:5] + [OOV_ID] for b in range(len(histories))]
        calls += [["score", {**inputs, "item_id": candidates}], ["retrieve", inputs]]
        refs.append((histories, candidates))
    first = batch(cases(run)["one"])
    spec = {"calls": calls, "bad": bad_requests(first)}
    out = run_tf_only(run.version_dir, spec, tmp_path)

    assert out["imported"] == [], "the SavedModel pulled in keras / tfnegseq"
    assert out["signatures"] == ["retrieve", "score"]
    for n, (histories, candidates) in enumerate(refs):
        scored, retrieved = out["calls"][2 * n], out["calls"][2 * n + 1]
        np.testing.assert_allclose(scored["score"], keras_score(run, histories, candidates),
                                   rtol=1e-5, atol=1e-5)
        assert np.shape(retrieved["item_id"]) == (len(histories), K)
        check_retrieved(run, histories, retrieved["item_id"], retrieved["score"])
        for (pos, _), ids in zip(histories, retrieved["item_id"], strict=True):
            assert not set(pos) & set(ids) and set(ids) <= set(catalogue)
    errors = out["errors"]
    assert "pos_item_id is not left-padded" in errors["not_left_padded"]
    assert "neg_item_id has an id where pos_item_id is padding" in errors["negative_at_padding"]
    assert "neg_item_id needs the shape of pos_item_id" in errors["negative_shape"]
    assert "empty candidate list" in errors["empty_candidates"]
    assert out["unregistered"] == [] and not out["xla"]
    assert sorted(out["warmup"]) == [
        ["sine", "retrieve", [1, K]], ["sine", "retrieve", [4, K]],
        ["sine", "score", [1, 10]], ["sine", "score", [4, 3]]]


def test_history_beyond_max_length_and_exclusion_past_it(run):
    """The graph keeps the last `max_length` positives (as training) but leaves out every
    sent positive, including older ones; a user who has seen the whole catalogue gets
    id -1 and float32's lowest score."""
    import tensorflow as tf

    loaded = tf.saved_model.load(run.version_dir)
    catalogue = [int(i) for i in run.vocab.ids]
    recent = catalogue[:MAX_LENGTH]
    older = catalogue[MAX_LENGTH:MAX_LENGTH + 3]
    long_pos = older + recent
    call = loaded.signatures["retrieve"]
    got = call(pos_item_id=tf.constant([long_pos], tf.int64),
               neg_item_id=tf.constant([[-1] * len(long_pos)], tf.int64))
    ids = got["item_id"].numpy()[0]
    assert not set(ids.tolist()) & set(long_pos)
    # the scores are those of the recent history alone
    scored = loaded.signatures["score"](
        pos_item_id=tf.constant([long_pos, [-1] * 3 + recent], tf.int64),
        neg_item_id=tf.constant([[-1] * len(long_pos)] * 2, tf.int64),
        item_id=tf.constant([ids.tolist()] * 2, tf.int64))["score"].numpy()
    np.testing.assert_allclose(scored[0], scored[1], rtol=1e-6)
    np.testing.assert_allclose(scored[0], got["score"].numpy()[0], rtol=1e-5, atol=1e-6)
    everything = call(pos_item_id=tf.constant([catalogue[2:] + catalogue[:2]], tf.int64),
                      neg_item_id=tf.constant([[-1] * len(catalogue)], tf.int64))
    assert everything["item_id"].numpy().tolist() == [[-1] * K]
    assert (everything["score"].numpy() == np.finfo(np.float32).min).all()


def test_metadata_and_assets(run):
    from tfnegseq.export import read_metadata

    meta = read_metadata(run.version_dir)
    assert meta["model_kind"] == "sequential"
    sigs = meta["signatures"]
    assert set(sigs["score"]["inputs"]) == {"pos_item_id", "neg_item_id", "item_id"}
    assert set(sigs["retrieve"]["inputs"]) == {"pos_item_id", "neg_item_id"}
    assert sigs["retrieve"]["k"] == K and sigs["max_length"] == MAX_LENGTH
    ids = np.loadtxt(os.path.join(run.version_dir, "assets", "item_id.txt"), np.int64)
    np.testing.assert_array_equal(ids, run.vocab.ids)


def test_example_history_pairs_each_positive_with_its_nearest_negative():
    from tfnegseq.kinds.sequential.export import example_history

    # a neutral event (17) between a skip and a positive: only "window" pairs them
    example = {"seq_item_id": [10, 11, 17, 12, 13, 14, 15, 16],
               "seq_polarity": [1, -1, 0, 1, 1, -1, 1, -1],
               "valid_index": [6], "valid_item_id": [15], "test_item_id": [99]}
    assert example_history(example) == ([10, 12, 13, 15], [-1, -1, -1, 14])
    assert example_history(example, "window") == ([10, 12, 13, 15], [-1, 11, -1, 14])


@pytest.mark.serving
def test_rest_row_and_columnar_through_the_local_server(run):
    from tfnegseq.serving.server import serve_in_thread

    histories = cases(run)["mixed"]
    inputs = batch(histories)
    candidates = [[int(i) for i in run.vocab.ids[:3]]] * len(histories)
    want_scores = keras_score(run, histories, candidates)
    rows = [{k: v[b] for k, v in inputs.items()} for b in range(len(histories))]
    base = os.path.dirname(run.version_dir)
    with serve_in_thread(base, "sine", file_system_poll_wait_seconds=0) as server:
        url = f"{server.url}/v1/models/sine:predict"

        def post(body: dict) -> requests.Response:
            return requests.post(url, json=body, timeout=60)

        row = post({"signature_name": "score",
                    "instances": [{**r, "item_id": c} for r, c in zip(rows, candidates, strict=True)]})
        col = post({"signature_name": "score", "inputs": {**inputs, "item_id": candidates}})
        assert row.status_code == col.status_code == 200, (row.text, col.text)
        np.testing.assert_allclose(row.json()["predictions"], want_scores, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(col.json()["outputs"], want_scores, rtol=1e-5, atol=1e-5)

        row = post({"signature_name": "retrieve", "instances": rows}).json()["predictions"]
        col = post({"signature_name": "retrieve", "inputs": inputs}).json()["outputs"]
        check_retrieved(run, histories, [p["item_id"] for p in row], [p["score"] for p in row])
        check_retrieved(run, histories, col["item_id"], col["score"])

        for name, body in bad_requests(batch(cases(run)["one"])).values():
            reply = post({"signature_name": name, "inputs": body})
            assert reply.status_code == 400, reply.text
        reply = post({"signature_name": "retrieve",
                      "instances": [{"pos_item_id": [5, -1], "neg_item_id": [-1, -1]}]})
        assert reply.status_code == 400
        assert "pos_item_id is not left-padded" in reply.json()["error"]
        meta = requests.get(f"{server.url}/v1/models/sine/metadata", timeout=30).json()
        signatures = meta["metadata"]["signature_def"]["signature_def"]
        assert {"retrieve", "score"} <= set(signatures)
        assert set(signatures["retrieve"]["inputs"]) == {"pos_item_id", "neg_item_id"}


@pytest.mark.parametrize("architecture", ["sasrec", "gru4rec", "din", "sine"])
def test_baselines_export_the_same_signatures(samples, architecture):
    """The baselines go through the same signatures (the whole catalogue against the
    item table at once, `catalogue_scores`; DIN's state depends on the item scored, so
    only `call` scores it, in chunks); "sine" here: SINE without `rank_chunk_size`
    (the table path; the `run` fixture takes the chunked loop)."""
    import tensorflow as tf

    r = train_run(samples, architecture)
    loaded = tf.saved_model.load(r.version_dir)
    histories = cases(r)["mixed"]
    inputs = {k: tf.constant(v, tf.int64) for k, v in batch(histories).items()}
    candidates = [[int(i) for i in r.vocab.ids[b:b + 4]] for b in range(len(histories))]
    got = loaded.signatures["score"](**inputs, item_id=tf.constant(candidates, tf.int64))
    np.testing.assert_allclose(got["score"].numpy(), keras_score(r, histories, candidates),
                               rtol=1e-5, atol=1e-5)
    top = loaded.signatures["retrieve"](**inputs)
    check_retrieved(r, histories, top["item_id"].numpy(), top["score"].numpy())
