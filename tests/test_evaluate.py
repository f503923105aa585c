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
    raw = rng.integers(10**12, 10**12 + 30, n)  # 30 raw users ...
    looked_up = np.where(raw % 3 == 0, raw - 10**12 + 16, 1)  # ... 2/3 share OOV row 1
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
    cfg = config_from_dict({"train": {"jit_compile": jit_compile}})
    m = evaluate(ScoreModel(), ds, kinds.get_kind("ctr"), cfg, verbose=0)
    p = 1 / (1 + np.exp(-score.astype(np.float64)))
    assert m["eval_examples"] == len(y)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert m["logloss"] == pytest.approx(log_loss(y, p), abs=1e-5)
    assert m["gauc"] == pytest.approx(sklearn_gauc(raw, y, p), abs=1e-6)
    # the data tells the two groupings apart (the old evaluation grouped by the row)
    assert abs(sklearn_gauc(looked_up, y, p) - sklearn_gauc(raw, y, p)) > 0.01
