"""train.auto_clustering: XLA clusters everything but the matmuls; numerics as eager.

TensorFlow reads TF_XLA_FLAGS once per process, so the check runs in a fresh subprocess:
one training step under auto-clustering (mixed-sequence DIN + TAPF, float32) from the
same initial weights and batch as an eager step; the updated weights agree, the XLA
modules TensorFlow compiled (dumped with --xla_dump_to) hold the fused elementwise work
and no dot.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from tfnegseq.config import ConfigError, load_config
from tfnegseq.runtime import auto_clustering_flags

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import tensorflow as tf
    from tfnegseq.config import load_config
    from tfnegseq.data.input import FeatureProcessor, make_dataset
    from tfnegseq.runtime import auto_clustering
    from tfnegseq.train import build_model

    config, sets, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    cfg = load_config(config, sets)
    with auto_clustering():
        processor = FeatureProcessor.from_data_dir(cfg.train.data_dir or cfg.output.dir, cfg)
        sizes = {n: v.size for n, v in processor.vocabularies.items()}
        ds = make_dataset(cfg.output.dir, "train", cfg, 128, training=False,
                          processor=processor)
        x, y = next(iter(ds))
        weights = None
        after = {}
        for name, eager in (("clustered", False), ("eager", True)):
            keras.utils.set_random_seed(0)
            model = build_model(cfg, sizes)
            model(x)
            if weights is None:
                weights = [w.numpy() for w in model.weights]
            model.set_weights(weights)
            model.compile(optimizer=keras.optimizers.Adam(1e-2),
                          jit_compile=False, run_eagerly=eager)
            loss = float(model.train_on_batch(x, y))
            after[name] = (loss, [w.numpy() for w in model.weights])
    (l1, w1), (l2, w2) = after["clustered"], after["eager"]
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(w1, weights))
    json.dump({"loss": [l1, l2], "max_weight_diff": worst, "max_update": moved,
               "jit": tf.config.optimizer.get_jit()}, open(out, "w"))
    """
)


def test_flags_keep_the_users_own():
    flags = auto_clustering_flags("--tf_xla_min_cluster_size=4 --tf_xla_clustering_debug")
    assert "--tf_xla_clustering_debug" in flags.split()
    assert "--tf_xla_min_cluster_size=1" in flags.split()
    assert "--tf_xla_min_cluster_size=4" not in flags
    ops = dict(f.split("=", 1) for f in flags.split() if "=" in f)["--tf_xla_ops_to_cluster"]
    assert "FUSIBLE" in ops.split(",") and "MatMul" not in ops and "BatchMatMulV2" not in ops


@pytest.mark.parametrize("key, needs", [
    ("auto_clustering", "train.jit_compile=false"),
    ("deterministic_ops", "train.deterministic_input=true"),
])
def test_execution_setting_without_its_companion_is_refused(key, needs):
    """auto_clustering needs jit_compile off; deterministic_ops needs deterministic input."""
    with pytest.raises(ConfigError, match=f"train.{key}"):
        load_config(REPO / "configs" / "synthetic.yaml", [f"train.{key}=true"])
    cfg = load_config(REPO / "configs" / "synthetic.yaml", [f"train.{key}=true", needs])
    assert getattr(cfg.train, key)


def test_auto_clustered_step_matches_eager_and_leaves_matmuls_out(tiny_samples, tmp_path):
    _, sets, _ = tiny_samples
    dump = tmp_path / "xla"
    out = tmp_path / "result.json"
    env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={dump} --xla_dump_hlo_as_text",
               PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_XLA_FLAGS", None)
    sets = [*sets, "model.polarity=tapf", "model.backbone=din",
            "train.jit_compile=false", "train.auto_clustering=true"]
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO / "configs" / "synthetic.yaml"),
         json.dumps(sets), str(out)],
        check=True, env=env, cwd=REPO, timeout=600,
    )
    result = json.loads(out.read_text())
    assert result["jit"] == "", result  # the previous level is restored after the block
    assert result["max_update"] > 1e-3  # Adam(1e-2) moved the weights
    assert result["max_weight_diff"] < 1e-4, result
    assert abs(result["loss"][0] - result["loss"][1]) < 1e-5, result
    # XLA compiled clusters (auto-clustering ran) and none of them holds a matmul.
    modules = list(dump.glob("*cluster*after_optimizations.txt"))
    assert modules, sorted(p.name for p in dump.iterdir())[:20]
    text = "\n".join(p.read_text() for p in modules)
    assert " dot(" not in text
    assert "fusion" in text


def test_deterministic_ops_are_on_for_the_run_only_and_repeat_it_exactly(tiny_samples, tmp_path):
    """Two runs of one seed with deterministic ops and input: the same weights bit for
    bit and the same metrics; op determinism is on during training and off after."""
    import keras
    import numpy as np
    from tensorflow.python.framework import config as tf_config

    from tfnegseq import train

    _, sets, _ = tiny_samples
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(tf_config.is_op_determinism_enabled())

    results, weights = [], []
    for name in ("a", "b"):
        cfg = load_config(REPO / "configs" / "synthetic.yaml", [
            *sets, "train.deterministic_ops=true", "train.deterministic_input=true",
            "train.epochs=2", "train.export=false", "train.keep_checkpoints=0",
            f"train.run_dir={tmp_path / name}"])
        results.append(train.run_config(cfg, verbose=0, extra_callbacks=[Probe()]))
        weights.append(keras.saving.load_model(tmp_path / name / "model.keras").get_weights())
        assert not tf_config.is_op_determinism_enabled()
    assert seen and all(seen)
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
    for key in ("auc", "gauc", "logloss"):
        assert results[0][key] == results[1][key], key
