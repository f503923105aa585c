"""`train.distribution`: data-parallel training equals one device (tfnegseq/distribute.py).

Each run is `python -m tfnegseq.train` in its own process: devices (logical CPU devices
for TensorFlow, forced host devices for JAX) are fixed when a backend starts.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfnegseq.models  # noqa: F401  (registers the model classes for loading)
from tfnegseq.config import ConfigError, load_config

from .conftest import REPO

CONFIG = str(REPO / "configs" / "synthetic.yaml")


def _env(backend: str = "tensorflow", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KERAS_DISTRIBUTION_", "XLA_FLAGS", "TF_CONFIG"))}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def train_run(sets: list[str], run_dir, backend: str = "tensorflow", timeout: int = 400,
              env: dict[str, str] | None = None) -> dict:
    """`python -m tfnegseq.train` in a subprocess; the run's metrics.json."""
    cmd = [sys.executable, "-m", "tfnegseq.train", "--config", CONFIG,
           *[a for s in sets + [f"train.run_dir={run_dir}"] for a in ("--set", s)]]
    done = subprocess.run(cmd, env=env or _env(backend), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.load(open(os.path.join(run_dir, "metrics.json")))


def weights(run_dir) -> list[np.ndarray]:
    return keras.saving.load_model(os.path.join(run_dir, "model.keras")).get_weights()


def assert_same_model(a, b, atol=2e-5):
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb)
    moved = 0
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=atol)
        moved += 1
    assert moved > 10


# A few steps in a fixed order; no export, no checkpoints. Under tf.distribute, Keras'
# fit draws a batch to build the step and then restarts the input, so its first epoch
# is the input's second iteration: the same examples in another shuffle. One training
# file and no example shuffle make every iteration the same order.
STEPS = ["train.epochs=1", "train.steps_per_epoch=4", "train.deterministic_input=true",
         "train.export=false", "train.keep_checkpoints=0", "train.batch_size=256",
         "train.shuffle_buffer=0"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Tiny simulated samples in one file per split: the `--set` list."""
    from tfnegseq.data import job
    from tfnegseq.data.simulate import simulate_to_dir

    root = tmp_path_factory.mktemp("tiny1")
    sets = [f"source.path={root}/log", f"output.dir={root}/samples", "output.shards=1",
            "simulate.num_users=60", "simulate.num_items=300",
            "simulate.events_per_user_min=20", "simulate.events_per_user_max=200",
            "samples.max_history=20", "model.sequence_length=20", "model.embedding_dim=16"]
    cfg = load_config(CONFIG, sets)
    simulate_to_dir(cfg.simulate, cfg.source.path)
    job.run(cfg)
    return sets


@pytest.fixture(scope="module")
def single_device(samples, tmp_path_factory):
    """The same training on one device: (run_dir, metrics)."""
    run = tmp_path_factory.mktemp("single") / "run"
    return run, train_run(samples + STEPS, run)


def test_mirrored_over_two_cpu_devices_trains_the_one_device_model(samples, single_device,
                                                                   tmp_path):
    run, single = single_device
    mirrored = train_run(samples + STEPS + ["train.distribution=mirrored", "train.cpu_devices=2"],
                         tmp_path / "run")
    assert mirrored["distribution"]["replicas"] == 2
    assert len(mirrored["distribution"]["devices"]) == 2
    assert single["distribution"]["replicas"] == 1
    # an untrained model would differ from the trained one by far more than atol
    assert_same_model(run, tmp_path / "run")
    # the evaluation covers the whole split, as on one device
    assert mirrored["eval_examples"] == single["eval_examples"]
    for k in ("auc", "gauc", "logloss"):
        assert mirrored[k] == pytest.approx(single[k], abs=1e-4)


def test_the_comparison_can_fail(samples, single_device, tmp_path):
    """The comparison above means something: the same 4 steps from another seed's
    initial weights end far outside its tolerance."""
    run, _ = single_device
    other = tmp_path / "run"
    train_run(samples + STEPS + ["train.seed=1"], other)
    wa, wb = weights(run), weights(other)
    assert max(float(np.abs(x - y).max()) for x, y in zip(wa, wb, strict=True)) > 1e-3


def test_mirrored_row_sparse_updates_equal_one_device(samples, tmp_path):
    sparse = STEPS + ["train.embedding_updates=row_sparse"]
    train_run(samples + sparse, tmp_path / "one")
    train_run(samples + sparse + ["train.distribution=mirrored", "train.cpu_devices=2"],
              tmp_path / "two")
    assert_same_model(tmp_path / "one", tmp_path / "two")


def test_scale_loss_for_distribution_divides_by_the_replicas():
    """The private Keras helper the sequential and CAIN losses use (keras_internals)."""
    code = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfnegseq.keras_internals import scale_loss_for_distribution
s = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = s.run(lambda: scale_loss_for_distribution(tf.constant(3.0)))
print([float(v) for v in s.experimental_local_results(out)],
      float(scale_loss_for_distribution(tf.constant(3.0))))
"""
    done = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[1.5, 1.5] 3.0"


# ---------------------------------------------------------------------- refusals
def test_multi_worker_is_refused_at_load_citing_the_keras_issue():
    with pytest.raises(ConfigError, match=r"keras-team/keras#20585.*data_parallel"):
        load_config(CONFIG, ["train.distribution=multi_worker"])


@pytest.mark.parametrize("sets, says", [
    (["train.cpu_devices=-1"], "cpu_devices: must be >= 0"),
    (["train.model_shards=0"], "model_shards: must be >= 1"),
    (["train.distribution=ring"], "distribution"),
])
def test_impossible_distribution_settings_are_refused_at_load(sets, says):
    with pytest.raises(ConfigError, match=says):
        load_config(CONFIG, sets)


@pytest.mark.parametrize("sets, backend, says", [
    (["train.distribution=mirrored"], "jax", "'mirrored' is a TensorFlow strategy"),
    (["train.distribution=data_parallel"], "tensorflow", "KERAS_BACKEND=jax"),
    (["train.distribution=model_parallel", "train.embedding_updates=row_sparse"], "jax",
     "row_sparse is not supported with train.distribution: model_parallel"),
])
def test_a_distribution_of_the_other_backend_is_refused(sets, backend, says):
    from tfnegseq.distribute import check_backend

    with pytest.raises(ConfigError, match=says):
        check_backend(load_config(CONFIG, sets), backend)


def test_the_cli_prints_one_line_for_a_distribution_of_the_other_backend(samples, tmp_path):
    cmd = [sys.executable, "-m", "tfnegseq.train", "--config", CONFIG,
           *[a for s in samples + STEPS + ["train.distribution=data_parallel",
                                        f"train.run_dir={tmp_path}/run"]
             for a in ("--set", s)]]
    done = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train.distribution: 'data_parallel'"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_an_uneven_global_batch_is_refused():
    from tfnegseq.distribute import per_replica_batch

    cfg = load_config(CONFIG, ["train.batch_size=255", "train.distribution=mirrored"])
    with pytest.raises(ConfigError, match=r"global batch \(255\).*2 replicas"):
        per_replica_batch(cfg, 2)
    assert per_replica_batch(load_config(CONFIG, ["train.batch_size=256"]), 2) == 128
