"""OneTrans, HyFormer and MixFormer train through `tfnegseq.train` and export.

For each backbone: one epoch on the tiny simulated log (with user and item side
features), export, then both SavedModel signatures score the test examples as the
training path (`FeatureProcessor` + the reloaded `model.keras`) does.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers_export import (
    CONFIG,
    Exported,
    keras_probabilities,
    raw_rows,
    read_examples,
    serving_case,
)


@pytest.mark.parametrize("backbone", [
    "onetrans",  # the other two in `make test-slow` (30 s each; the default run's budget)
    pytest.param("hyformer", marks=pytest.mark.slow),
    pytest.param("mixformer", marks=pytest.mark.slow),
])
def test_unified_backbone_trains_and_exports(tiny_samples, tmp_path, backbone):
    import tensorflow as tf

    from tfnegseq import train
    from tfnegseq.config import load_config
    from tfnegseq.export import export_run

    _, sets, _ = tiny_samples
    cfg = load_config(CONFIG, sets + [f"train.run_dir={tmp_path}/run", "train.epochs=1",
                                      f"model.backbone={backbone}", "model.num_layers=2"])
    metrics = train.run_config(cfg, verbose=0)
    assert 0.0 < metrics["logloss"] < 5.0 and 0.0 <= metrics["auc"] <= 1.0
    version_dir = export_run(cfg.train.run_dir)
    exp = Exported(cfg, cfg.train.run_dir, version_dir, cfg.output.dir, cfg.name)

    examples = read_examples(exp.data_dir, count=24)
    want = keras_probabilities(exp, examples)
    loaded = tf.saved_model.load(version_dir)
    got = loaded.signatures["score_examples"](examples=tf.constant(examples))["probability"]
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-5)

    # serving_default: the raw histories of 3 users, each against 4 candidates
    rows = raw_rows(cfg, examples)
    batch, references = serving_case(exp, rows[:3], rows[3:7], [20, 5, 1])
    served = loaded.signatures["serving_default"](
        **{k: tf.constant(v, tf.int64, shape=np.shape(v)) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(served["probability"], np.float64).reshape(-1),
                               keras_probabilities(exp, references), rtol=1e-4, atol=1e-5)
