"""The CAIN model (kind `cain`) exports and serves like the CTR models, with the
lifelong sequence as raw lists (issue 14): `serving_default` in a process that never
imports keras or tfnegseq equals the Keras model on the same examples, a lifelong list
longer than trained keeps its most recent `lifelong_length` entries, and malformed
lifelong lists are refused with the field named. PEG reads the user id, the
behavioural statistics of the lifelong lists and the most interacted category (from the
`life_item_category` list), so the served graph computes those too."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers_export import (
    HISTORY_LISTS,
    LIFELONG_LISTS,
    Exported,
    keras_probabilities,
    raw_rows,
    read_examples,
    serving_case,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
LIFE = 24  # samples.lifelong_length of the fixture
LISTS = HISTORY_LISTS + LIFELONG_LISTS + ("life_item_category",)


@pytest.fixture(scope="module")
def cain_export(tmp_path_factory) -> Exported:
    from tfnegseq import train
    from tfnegseq.config import load_config
    from tfnegseq.data import job
    from tfnegseq.data.simulate import simulate_to_dir
    from tfnegseq.export import export_run

    root = tmp_path_factory.mktemp("cain")
    sets = [f"source.path={root}/log", f"output.dir={root}/samples", "simulate.num_users=40",
            "simulate.num_items=200", "simulate.events_per_user_min=20",
            "simulate.events_per_user_max=120", "samples.max_history=10",
            f"samples.lifelong_length={LIFE}", "name=cain_tiny",
            "model.kind=cain", "model.sequence_length=10", "model.embedding_dim=8",
            f"model.lifelong_length={LIFE}", "model.msia_layers=2", "model.context_length=2",
            "model.lap_top_k=[12,6]", "model.lifelong_attention_dim=8", "model.peg_units=4",
            "samples.lifelong_item_features=[category]",
            "model.peg_inputs=[user_id,behavioral,most_interacted]",
            "model.lifelong_value_boundaries=[0.3,0.7]",
            "train.batch_size=256", "train.epochs=1", f"train.run_dir={root}/run"]
    cfg = load_config(REPO / "configs" / "synthetic.yaml", sets)
    simulate_to_dir(cfg.simulate, cfg.source.path)
    job.run(cfg)
    train.run_config(cfg, verbose=0)
    version_dir = export_run(cfg.train.run_dir)
    return Exported(cfg, cfg.train.run_dir, version_dir, cfg.output.dir, cfg.name)


SCRIPT = r"""
import json, sys
sys.modules["keras"] = None
sys.modules["tfnegseq"] = None
import numpy as np
import tensorflow as tf

model_dir, spec_path, out_path = sys.argv[1:4]
spec = json.load(open(spec_path))
serve = tf.saved_model.load(model_dir).signatures["serving_default"]
dtypes = {k: v.dtype for k, v in serve.structured_input_signature[1].items()}

def call(batch):
    return serve(**{k: tf.constant(v, dtypes[k], shape=np.shape(v)) for k, v in batch.items()})

out = {"inputs": sorted(dtypes), "float_inputs": sorted(k for k, v in dtypes.items() if v == tf.float32)}
out["serving"] = [call(b)["probability"].numpy().tolist() for b in spec["serving"]]
out["errors"], out["scored"] = {}, {}
for name, batch in spec["bad"].items():
    try:
        out["scored"][name] = call(batch)["probability"].numpy().tolist()
        out["errors"][name] = None
    except tf.errors.InvalidArgumentError as e:
        out["errors"][name] = e.message
out["imported"] = sorted(k for k, v in sys.modules.items()
                         if v is not None and k.split(".")[0] in ("keras", "tfnegseq"))
json.dump(out, open(out_path, "w"))
"""


def test_cain_saved_model_matches_keras_in_a_tensorflow_only_process(cain_export, tmp_path):
    import tfnegseq.models  # noqa: F401  (registers CainModel for keras_probabilities)

    exp = cain_export
    examples = read_examples(exp.data_dir, count=60)
    rows = raw_rows(exp.cfg, examples)
    long = [r for r in rows if len(r["life_item_id"]) >= 10 and r["pos_item_id"]]
    assert long, "the fixture has no sample with a lifelong history"
    cases = [serving_case(exp, long[:1], rows[5:9], [7], LISTS),
             serving_case(exp, long[1:4], rows[20:23], [LIFE, 3, 0], LISTS)]
    first = cases[0][0]
    n = LIFE + 5
    too_long = {**first, "life_item_id": [list(range(1, n + 1))],
                "life_order": [list(range(1, n + 1))], "life_polarity": [[1] * n],
                "life_value": [[0.5] * n], "life_item_category": [[i % 7 for i in range(n)]]}
    truncated = {**first, "life_item_id": [list(range(6, n + 1))],
                 "life_order": [list(range(6, n + 1))], "life_polarity": [[1] * LIFE],
                 "life_value": [[0.5] * LIFE],
                 "life_item_category": [[i % 7 for i in range(5, n)]]}
    not_left_padded = {**first, "life_item_id": [[5, -1]], "life_order": [[1, 0]],
                       "life_polarity": [[1, 0]], "life_value": [[1.0, 0.0]],
                       "life_item_category": [[1, -1]]}
    unordered = {**first, "life_item_id": [[5, 6]], "life_order": [[4, 4]],
                 "life_polarity": [[1, 1]], "life_value": [[1.0, 1.0]],
                 "life_item_category": [[1, 2]]}
    ragged = {**first, "life_item_id": [[5, 6]], "life_order": [[1, 2]],
              "life_polarity": [[1, 1]], "life_value": [[1.0, 1.0]],
              "life_item_category": [[1]]}
    spec = {"serving": [b for b, _ in cases],
            "bad": {"too_long": too_long, "truncated": truncated, "ragged": ragged,
                    "not_left_padded": not_left_padded, "unordered": unordered}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "check.py").write_text(SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(tmp_path / "check.py"), exp.version_dir,
                           str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())

    assert out["imported"] == []
    assert {"life_item_id", "life_order", "life_polarity", "life_value",
            "life_item_category"} <= set(out["inputs"])
    assert out["float_inputs"] == ["life_value"]
    for (batch, refs), got in zip(cases, out["serving"], strict=True):
        want = keras_probabilities(exp, refs).reshape(len(batch["user_id"]), -1)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert out["errors"]["too_long"] is None and out["errors"]["truncated"] is None
    assert out["scored"]["too_long"] == out["scored"]["truncated"]
    assert "life_item_id is not left-padded" in out["errors"]["not_left_padded"]
    assert "life_order must increase strictly" in out["errors"]["unordered"]
    assert "life_item_id and life_item_category need the same shape" in out["errors"]["ragged"]
