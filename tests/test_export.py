"""Export: both signatures equal the Keras model, loaded in a TensorFlow-only process.

The reference is the training path: each (user, candidate) row is written as a
tf.Example, parsed by `FeatureProcessor` (array-built lookups, tf.data padding) and
scored by the reloaded `model.keras`. The SavedModel runs in a fresh interpreter in which
`keras` and `tfnegseq` cannot be imported (`sys.modules[name] = None`; `import
tensorflow` itself tries `keras.src.optimizers` inside a try/except ImportError).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from tests.helpers_export import (
    CONFIG,
    Exported,
    keras_probabilities,
    raw_rows,
    read_examples,
    serving_case,
    trained_export,
)

MAX_HISTORY = 20  # tiny_samples' samples.max_history


@pytest.fixture(scope="module")
def exported(tiny_samples, tmp_path_factory) -> Exported:
    return trained_export(tiny_samples, tmp_path_factory)


# --------------------------------------------------------------------------- reference


TF_ONLY_SCRIPT = r"""
import base64, json, sys
sys.modules["keras"] = None      # `import keras` now raises ImportError
sys.modules["tfnegseq"] = None
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

model_dir, spec_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
loaded = tf.saved_model.load(model_dir)
serve = loaded.signatures["serving_default"]
score = loaded.signatures["score_examples"]

def call(batch):
    return serve(**{k: tf.constant(v, tf.int64, shape=np.shape(v)) for k, v in batch.items()})

out = {"signatures": sorted(loaded.signatures)}
out["serving"] = [call(b)["probability"].numpy().tolist() for b in spec["serving"]]
out["examples"] = [
    score(examples=tf.constant([base64.b64decode(e) for e in b]))["probability"].numpy().tolist()
    for b in spec["examples"]
]
out["errors"], out["scored"] = {}, {}
for name, batch in spec["bad"].items():
    try:
        out["scored"][name] = call(batch)["probability"].numpy().tolist()
        out["errors"][name] = None
    except tf.errors.InvalidArgumentError as e:
        out["errors"][name] = e.message

proto = saved_model_pb2.SavedModel()
with open(model_dir + "/saved_model.pb", "rb") as f:
    proto.ParseFromString(f.read())
graph = proto.meta_graphs[0]
functions = {fn.signature.name for fn in graph.graph_def.library.function}
ops = {op.name for op in graph.meta_info_def.stripped_op_list.op}
ops |= {n.op for n in graph.graph_def.node}
xla = False
for fn in graph.graph_def.library.function:
    ops |= {n.op for n in fn.node_def}
    xla |= any(k.startswith("_Xla") and v.b for k, v in fn.attr.items())
    xla |= any(k.startswith("_Xla") and v.b for n in fn.node_def for k, v in n.attr.items())
ops -= functions
out["ops"] = sorted(ops)
out["unregistered"] = sorted(o for o in ops if op_def_registry.get(o) is None)
out["xla"] = bool(xla)
out["imported"] = sorted(
    k for k, v in sys.modules.items() if v is not None and k.split(".")[0] in ("keras", "tfnegseq")
)

from tensorflow_serving.apis import prediction_log_pb2  # protos only; after the module check
out["warmup"] = []
for rec in tf.data.TFRecordDataset(model_dir + "/assets.extra/tf_serving_warmup_requests"):
    request = prediction_log_pb2.PredictionLog.FromString(rec.numpy()).predict_log.request
    fn = loaded.signatures[request.model_spec.signature_name]
    res = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
    p = res["probability"].numpy()
    out["warmup"].append({
        "model": request.model_spec.name, "signature": request.model_spec.signature_name,
        "batch": int(tf.make_ndarray(next(iter(request.inputs.values()))).shape[0]),
        "shape": list(p.shape), "in_range": bool(((p > 0) & (p < 1)).all()),
    })
json.dump(out, open(out_path, "w"))
"""


def run_tf_only(version_dir: str, spec: dict[str, Any], tmp_path: pathlib.Path) -> dict[str, Any]:
    """Runs `TF_ONLY_SCRIPT` in a fresh interpreter; returns its JSON report."""
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "check.py").write_text(TF_ONLY_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "check.py"),
            version_dir,
            str(tmp_path / "spec.json"),
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp_path / "out.json").read_text())


# --------------------------------------------------------------------------- tests


def test_saved_model_matches_keras_in_a_tensorflow_only_process(exported, tmp_path):
    exp = exported
    assert exp.version_dir.endswith(os.path.join("run", "export", "synthetic", "1"))
    examples = read_examples(exp.data_dir, count=40)
    rows = raw_rows(exp.cfg, examples)
    # two users / three users, histories shorter than trained and of mixed lengths
    with_history = [r for r in rows if r["pos_item_id"] and r["neg_item_id"]]
    cases = [
        serving_case(exp, with_history[:1], rows[10:15], [7]),
        serving_case(exp, with_history[1:4], rows[20:24], [MAX_HISTORY, 3, 0]),
    ]
    assert len(cases[0][0]["pos_item_id"][0]) < MAX_HISTORY  # shorter than trained
    first = cases[0][0]
    too_long = {
        **first,
        "pos_item_id": [list(range(1, MAX_HISTORY + 2))],
        "pos_order": [list(range(1, MAX_HISTORY + 2))],
    }
    truncated = {  # what training keeps of a longer history: the most recent H
        **first,
        "pos_item_id": [list(range(2, MAX_HISTORY + 2))],
        "pos_order": [list(range(2, MAX_HISTORY + 2))],
    }
    empty = {**first, "item_id": [[]], "item_category": [[]]}
    not_left_padded = {**first, "pos_item_id": [[5, -1]], "pos_order": [[1, 0]]}
    unordered = {**first, "neg_item_id": [[5, 6]], "neg_order": [[9, 9]]}
    spec = {
        "serving": [b for b, _ in cases],
        "examples": [
            [base64.b64encode(e).decode() for e in examples[:1]],
            [base64.b64encode(e).decode() for e in examples[:16]],
        ],
        "bad": {"too_long": too_long, "truncated": truncated, "empty": empty,
                "unordered": unordered, "not_left_padded": not_left_padded},
    }
    out = run_tf_only(exp.version_dir, spec, tmp_path)

    assert out["imported"] == [], "the SavedModel pulled in keras / tfnegseq"
    assert out["signatures"] == ["score_examples", "serving_default"]
    for (batch, refs), got in zip(cases, out["serving"], strict=True):
        want = keras_probabilities(exp, refs).reshape(len(batch["user_id"]), -1)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    for batch, got in zip([examples[:1], examples[:16]], out["examples"], strict=True):
        np.testing.assert_allclose(got, keras_probabilities(exp, batch), rtol=1e-5, atol=1e-6)
    # a history longer than trained keeps its most recent H entries, as training does
    assert out["errors"]["too_long"] is None, out["errors"]
    assert out["errors"]["truncated"] is None, out["errors"]
    assert out["scored"]["too_long"] == out["scored"]["truncated"]
    assert "empty candidate list" in out["errors"]["empty"]
    assert "neg_order must increase strictly" in out["errors"]["unordered"]
    assert "pos_item_id is not left-padded" in out["errors"]["not_left_padded"]
    assert out["unregistered"] == [] and "MatMul" in out["ops"]
    assert not out["xla"]
    warm = out["warmup"]
    assert {w["signature"] for w in warm} == {"serving_default", "score_examples"}
    assert all(w["model"] == "synthetic" and w["in_range"] for w in warm)
    assert sorted(w["batch"] for w in warm if w["signature"] == "score_examples") == [1, 8]
    assert [w["shape"] for w in warm if w["signature"] == "serving_default"] == [[1, 10], [4, 3]]


def test_lookup_tables_are_assets(exported):
    assets = sorted(os.listdir(os.path.join(exported.version_dir, "assets")))
    assert assets == [
        "item_category.txt",
        "item_id.txt",
        "user_id.txt",
        "user_user_active_degree.txt",
    ]
    ids = np.loadtxt(os.path.join(exported.version_dir, "assets", "item_id.txt"), np.int64)
    from tfnegseq.data.vocab import Vocabulary

    vocab = Vocabulary.load(exported.data_dir, "item_id", exported.cfg.vocab)
    np.testing.assert_array_equal(ids, vocab.ids)


def test_versions_increment_and_existing_ones_are_refused(exported, tmp_path):
    from tfnegseq.export import export_run, main

    base = tmp_path / "exports"
    first = export_run(exported.run_dir, export_base=str(base), model_name="ctr")
    assert first == str(base / "ctr" / "1")
    (base / "ctr" / "5").mkdir()
    (base / "ctr" / "notes").mkdir()
    assert export_run(exported.run_dir, export_base=str(base), model_name="ctr") == str(
        base / "ctr" / "6"
    )
    assert sorted(os.listdir(base / "ctr")) == ["1", "5", "6", "notes"]  # no temp dirs left
    with pytest.raises(FileExistsError, match="6"):
        export_run(exported.run_dir, export_base=str(base), model_name="ctr", version=6)
    rc = main(
        [
            "--run-dir",
            exported.run_dir,
            "--export-base",
            str(base),
            "--model-name",
            "ctr",
            "--version",
            "1",
        ]
    )
    assert rc == 2


def test_missing_run_is_named(tmp_path, capsys):
    from tfnegseq.export import main

    assert main(["--run-dir", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.serving
def test_rest_score_equals_keras_through_the_local_server(tiny_samples, tmp_path_factory):
    from tfnegseq.serving.client import ServingClient
    from tfnegseq.serving.server import serve_in_thread

    exp = trained_export(tiny_samples, tmp_path_factory, item_features=False)
    rows = raw_rows(exp.cfg, read_examples(exp.data_dir, count=30))
    user = next(r for r in rows if len(r["pos_item_id"]) > 2 and r["neg_item_id"])
    candidates = [r["item_id"] for r in rows[5:12]]
    base = os.path.dirname(exp.version_dir)
    with serve_in_thread(base, exp.model_name, file_system_poll_wait_seconds=0) as server:
        client = ServingClient(server.url, exp.model_name, timeout=30.0)
        got = client.score(
            user["user_id"],
            user["pos_item_id"],
            user["pos_order"],
            user["neg_item_id"],
            user["neg_order"],
            candidates,
            profile={"user_active_degree": user["user_user_active_degree"]},
        )
    _, refs = serving_case(exp, [user], [{"item_id": c} for c in candidates], [MAX_HISTORY])
    np.testing.assert_allclose(got, keras_probabilities(exp, refs), rtol=1e-5, atol=1e-6)


def test_export_needs_only_the_run_directory(tiny_samples, tmp_path):
    """The vocabularies and warm-up examples are copied into the run at training time:
    the samples directory can be gone when the run is exported."""
    import shutil

    import tensorflow as tf

    from tfnegseq import train
    from tfnegseq.config import load_config
    from tfnegseq.export import export_run

    cfg, sets, _ = tiny_samples
    samples = tmp_path / "samples"
    shutil.copytree(cfg.output.dir, samples)
    run = load_config(CONFIG, sets + [f"train.data_dir={samples}", "train.epochs=1",
                                           "train.steps_per_epoch=2", "train.export=false",
                                           f"train.run_dir={tmp_path}/run"])
    train.run_config(run, verbose=0)
    assert sorted(os.listdir(tmp_path / "run" / "data" / "vocab")) == sorted(
        os.listdir(samples / "vocab"))
    shutil.rmtree(samples)
    version = export_run(str(tmp_path / "run"))
    loaded = tf.saved_model.load(version)
    assert sorted(loaded.signatures) == ["score_examples", "serving_default"]
    warmup = os.path.join(version, "assets.extra", "tf_serving_warmup_requests")
    assert sum(1 for _ in tf.data.TFRecordDataset(warmup)) == 4
