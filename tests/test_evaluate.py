"""Evaluation: compiled prediction over a whole split, the kind's metrics against sklearn,
and GAUC grouped by the raw user id."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from sklearn.metrics import log_loss, roc_auc_score

from tfnegseq import kinds
from tfnegseq.config import config_from_dict
from tfnegseq.evaluate import evaluate


class ScoreModel(keras.Model):
    """probability = sigmoid(score): the score feature is the logit."""

    def call(self, inputs, training=None):
        logit = ops.cast(inputs["score"], "float32")
        return {"probability": ops.sigmoid(logit), "logit": logit}


def sklearn_gauc(users, y, p):
    """Impression-weighted mean of per-user AUCs over users with both labels."""
    total, weight = 0.0, 0
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            total += m.sum() * roc_auc_score(y[m], p[m])
            weight += m.sum()
    return total / weight


def dataset(n=300, seed=0):
    rng = np.random.default_rng(seed)
    # 30 raw 64-bit ids whose low 32 bits collide in pairs (int32 would merge them) ...
    raw = (rng.integers(0, 15, n) + 2**40 * rng.integers(1, 3, n)).astype(np.int64)
    looked_up = np.where(raw % 3 == 0, raw % 2**32 + 16, 1)  # ... 2/3 share OOV row 1
    y = rng.integers(0, 2, n).astype("float32")
    # per-user offsets make pooled and per-user AUCs differ
    score = (y - 0.5) * rng.random(n) + (raw % 7) * 0.3 + rng.normal(0, 0.5, n)
    features = {"user_id": looked_up.astype("int64"), "raw_user_id": raw.astype("int64"),
                "score": score.astype("float32")}
    ds = tf.data.Dataset.from_tensor_slices((features, y)).batch(64)
    return ds, raw, looked_up, y, score


@pytest.mark.parametrize("jit_compile", [True, False])
def test_ctr_metrics_match_sklearn_and_gauc_groups_by_raw_user(jit_compile):
    ds, raw, looked_up, y, score = dataset()
    cfg = config_from_dict({})
    model = ScoreModel()
    model.compile(jit_compile=jit_compile)
    m = evaluate(model, ds, kinds.get_kind("ctr"), cfg, verbose=0)
    p = 1 / (1 + np.exp(-score.astype(np.float64)))
    assert m["eval_examples"] == len(y)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert m["logloss"] == pytest.approx(log_loss(y, p), abs=1e-5)
    assert m["gauc"] == pytest.approx(sklearn_gauc(raw, y, p), abs=1e-6)
    # the data tells the groupings apart: by the looked-up row (the old evaluation) and
    # by the low 32 bits (an int32 pass-through under JAX) both give other values
    assert abs(sklearn_gauc(looked_up, y, p) - sklearn_gauc(raw, y, p)) > 0.01
    assert abs(sklearn_gauc(raw % 2**32, y, p) - sklearn_gauc(raw, y, p)) > 0.01


JAX_SCRIPT = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, sys.argv[1])
from tests.test_evaluate import ScoreModel, dataset, sklearn_gauc
import numpy as np
from tfnegseq import kinds
from tfnegseq.config import config_from_dict
from tfnegseq.evaluate import evaluate
import keras
assert keras.backend.backend() == "jax"
ds, raw, _, y, score = dataset()
m = evaluate(ScoreModel(), ds, kinds.get_kind("ctr"), config_from_dict({}), verbose=0)
p = 1 / (1 + np.exp(-score.astype(np.float64)))
print(json.dumps({"gauc": m["gauc"], "want": sklearn_gauc(raw, y, p)}))
"""


def test_gauc_keeps_64_bit_user_ids_under_jax(tmp_path):
    """Under JAX (int32 without x64) ids passed through the model would lose their high
    bits; evaluation reads them beside the prediction instead."""
    import json
    import pathlib
    import subprocess
    import sys

    repo = str(pathlib.Path(__file__).resolve().parents[1])
    (tmp_path / "run.py").write_text(JAX_SCRIPT)
    out = subprocess.run([sys.executable, str(tmp_path / "run.py"), repo], capture_output=True,
                         text=True, timeout=300, cwd=repo)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["gauc"] == pytest.approx(got["want"], abs=1e-6)
