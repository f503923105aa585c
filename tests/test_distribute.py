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

from .conftest import REPO, build_tiny_samples

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
KEEP = ["train.keep_checkpoints=1"]  # the epoch checkpoint too


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Tiny simulated samples in one file per split: the `--set` list."""
    return build_tiny_samples(tmp_path_factory.mktemp("tiny1"), ["output.shards=1"])[1]


@pytest.fixture(scope="module")
def single_device(samples, tmp_path_factory):
    """The same training on one device: (run_dir, metrics)."""
    run = tmp_path_factory.mktemp("single") / "run"
    return run, train_run(samples + STEPS + KEEP, run)


@pytest.mark.slow  # trains twice on two virtual CPU devices: about 75 s
def test_mirrored_over_two_cpu_devices_trains_the_one_device_model(samples, single_device,
                                                                   tmp_path):
    run, single = single_device
    mirrored = train_run(samples + STEPS + KEEP + ["train.distribution=mirrored",
                                                   "train.cpu_devices=2", "train.export=true"],
                         tmp_path / "run")
    assert mirrored["distribution"]["replicas"] == 2
    assert len(mirrored["distribution"]["devices"]) == 2
    assert single["distribution"]["replicas"] == 1
    # an untrained model would differ from the trained one by far more than atol
    assert_same_model(run, tmp_path / "run")
    # the epoch checkpoints hold the same weights too
    ckpt = os.path.join("checkpoints", "epoch_001.weights.h5")
    one = keras.saving.load_model(os.path.join(run, "model.keras"))
    two = keras.saving.load_model(os.path.join(run, "model.keras"))
    one.load_weights(os.path.join(run, ckpt))
    two.load_weights(os.path.join(tmp_path / "run", ckpt))
    for x, y in zip(one.get_weights(), two.get_weights(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5)
    # the evaluation covers the whole split, as on one device
    assert mirrored["eval_examples"] == single["eval_examples"]
    for k in ("auc", "gauc", "logloss"):
        assert mirrored[k] == pytest.approx(single[k], abs=1e-4)
    # the export of the mirrored run loads and scores without any strategy, as its model
    assert_export_scores_as_keras(samples, tmp_path / "run", mirrored["export"])


def assert_export_scores_as_keras(sets, run_dir, version_dir):
    import tensorflow as tf

    from .helpers_export import Exported, keras_probabilities, read_examples

    cfg = load_config(CONFIG, sets + [f"train.run_dir={run_dir}"])
    exp = Exported(cfg, str(run_dir), version_dir, cfg.output.dir, cfg.name)
    examples = read_examples(cfg.output.dir, count=64)
    served = tf.saved_model.load(version_dir).signatures["score_examples"](
        examples=tf.constant(examples))
    (probability,) = served.values()
    np.testing.assert_allclose(probability.numpy(), keras_probabilities(exp, examples),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # make test-slow
def test_the_comparison_can_fail(samples, single_device, tmp_path):
    """The comparison above means something: the same 4 steps from another seed's
    initial weights end far outside its tolerance."""
    run, _ = single_device
    other = tmp_path / "run"
    train_run(samples + STEPS + ["train.seed=1"], other)
    wa, wb = weights(run), weights(other)
    assert max(float(np.abs(x - y).max()) for x, y in zip(wa, wb, strict=True)) > 1e-3


@pytest.mark.slow  # make test-slow
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


# ---------------------------------------------------------------------- JAX
@pytest.mark.slow  # make test-slow
def test_jax_data_parallel_over_two_host_devices_trains_the_one_device_model(samples, tmp_path):
    train_run(samples + STEPS, tmp_path / "one", backend="jax")
    out = train_run(samples + STEPS + ["train.distribution=data_parallel", "train.cpu_devices=2"],
                    tmp_path / "two", backend="jax")
    assert out["distribution"]["replicas"] == 2 and out["distribution"]["sharded"] == {}
    assert_same_model(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow  # make test-slow
def test_jax_model_parallel_shards_the_item_table_by_rows(samples, tmp_path):
    one = train_run(samples + STEPS, tmp_path / "one", backend="jax")
    out = train_run(samples + STEPS + ["train.distribution=model_parallel",
                                       "train.cpu_devices=2", "train.model_shards=2"],
                    tmp_path / "two", backend="jax")
    # the item table's rows over the mesh's "model" axis, nothing else split
    assert out["distribution"]["sharded"] == {
        "ctr_model/item_embedding/embeddings": "('model', None)"}
    assert out["distribution"]["replicas"] == 1  # a (1, 2) mesh: one data replica
    assert_same_model(tmp_path / "one", tmp_path / "two")
    assert out["auc"] == pytest.approx(one["auc"], abs=1e-4)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(sets: list[str], run_dir, port: int, log_dir) -> list[subprocess.Popen]:
    """Two `python -m tfnegseq.train` processes of one data_parallel job on localhost."""
    procs = []
    for i in range(2):
        env = _env("jax", KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID=str(i),
                   JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # loopback only
                   TFNEGSEQ_HEARTBEAT_TIMEOUT="10", TFNEGSEQ_SHUTDOWN_TIMEOUT="60")
        cmd = [sys.executable, "-m", "tfnegseq.train", "--config", CONFIG,
               *[a for s in sets + ["train.distribution=data_parallel",
                                    f"train.run_dir={run_dir}"] for a in ("--set", s)]]
        log = open(os.path.join(log_dir, f"worker_{i}.log"), "a")
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=log))
    return procs


def wait_all(procs, timeout: float, log_dir) -> list[int]:
    import time

    end = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            tails = [open(os.path.join(log_dir, f"worker_{i}.log")).read()[-2000:]
                     for i in range(2)]
            raise AssertionError(f"workers still running after {timeout} s:\n{tails}") from None
    return codes


@pytest.mark.slow  # two worker processes train and export: about 2.5 minutes
def test_two_processes_train_the_one_process_model_and_export_it(tiny_samples, tmp_path):
    """Two worker processes on localhost (each reading its own file of the two) train
    the model that one process trains on the same global batches (process 0's batch,
    then process 1's: tests/distribute_reference.py); the chief's export scores like it."""
    _, sets, _ = tiny_samples
    job = sets + STEPS + ["train.epochs=2", "train.export=true"]
    codes = wait_all(start_workers(job, tmp_path / "run", _free_port(), tmp_path), 400,
                     tmp_path)
    assert codes == [0, 0], [open(tmp_path / f"worker_{i}.log").read()[-3000:] for i in (0, 1)]
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert metrics["distribution"]["num_processes"] == 2
    assert metrics["distribution"]["replicas"] == 2
    assert not (tmp_path / "run" / "backup").exists()
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "distribute_reference.py"), CONFIG,
         str(tmp_path / "reference"), *[a for s in job for a in ("--set", s)]],
        env=_env("jax"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_model(tmp_path / "run", tmp_path / "reference")
    # evaluated on the whole test split (not one process's part)
    manifest = json.load(open(os.path.join(load_config(CONFIG, job).output.dir,
                                           "manifest.json")))
    assert metrics["eval_examples"] == manifest["samples"]["test"]
    # the export of the distributed run scores as its Keras model
    assert_export_scores_as_keras(job, tmp_path / "run", metrics["export"])


def test_a_multi_process_job_refuses_fewer_files_than_processes(samples, tmp_path):
    """One training file for two processes: both stop with one clear line."""
    codes = wait_all(start_workers(samples + STEPS, tmp_path / "run", _free_port(), tmp_path),
                     300, tmp_path)
    assert codes == [2, 2]
    for i in range(2):
        last = open(tmp_path / f"worker_{i}.log").read().strip().splitlines()[-1]
        assert "1 file(s) for 2 processes" in last and "output.shards >= 2" in last, last


@pytest.mark.slow
def test_a_killed_worker_restarted_resumes_from_the_backup_with_the_same_steps(tiny_samples,
                                                                            tmp_path):
    """kill -9 one of two workers in its second epoch; its peer fails within the
    heartbeat timeout; the restarted pair resumes from the epoch-1 backups and ends with
    the steps of an uninterrupted run (the optimizer's iteration count)."""
    import time

    _, sets, _ = tiny_samples
    epochs, steps = 3, 40
    job = sets + STEPS + [f"train.epochs={epochs}", f"train.steps_per_epoch={steps}"]
    port = _free_port()
    procs = start_workers(job, tmp_path / "run", port, tmp_path)
    backup = tmp_path / "run" / "backup" / "process_1"
    state = tmp_path / "run" / "backup" / "tfnegseq_resume.json"  # the chief's record
    end = time.monotonic() + 300
    # epoch 1 backed up by worker 1 and recorded by the chief (a kill between the two
    # leaves a run the restart refuses, naming the backup to delete)
    while not (backup.exists() and any(backup.iterdir()) and state.exists()):
        assert time.monotonic() < end and all(p.poll() is None for p in procs), (
            [open(tmp_path / f"worker_{i}.log").read()[-2000:] for i in (0, 1)])
        time.sleep(0.2)
    procs[1].kill()
    codes = wait_all(procs, 120, tmp_path)
    assert codes[1] == -9 and codes[0] != 0  # the survivor did not finish alone
    assert not (tmp_path / "run" / "metrics.json").exists()

    codes = wait_all(start_workers(job, tmp_path / "run", _free_port(), tmp_path), 400,
                     tmp_path)
    assert codes == [0, 0], [open(tmp_path / f"worker_{i}.log").read()[-3000:] for i in (0, 1)]
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert metrics["resumed_from_epoch"] in (1, 2)
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert int(np.asarray(model.optimizer.iterations)) == epochs * steps


def test_model_parallel_pads_the_ctr_item_table_to_whole_shards(tmp_path):
    """An odd item vocabulary still splits over 2 devices: the CTR kinds round the
    table's rows up (`item_rows_multiple`); the extra rows are never looked up, the
    model records the true vocabulary (what export checks) and reloads as trained."""
    from tfnegseq import kinds

    cfg = load_config(CONFIG, ["train.distribution=model_parallel", "train.model_shards=4",
                               "model.embedding_dim=8", "model.sequence_length=5"])
    sizes = {"item_id": 1999, "user_id": 5, "user_user_active_degree": 3, "item_category": 4}
    model = kinds.get_kind("ctr").build_model(cfg, sizes)
    plain = kinds.get_kind("ctr").build_model(load_config(CONFIG, ["model.embedding_dim=8",
                                                                   "model.sequence_length=5"]),
                                              sizes)
    rng = np.random.default_rng(0)
    batch = {"user_id": rng.integers(0, 5, 3), "item_id": np.array([0, 1000, 1998]),
             "pos_item_id": rng.integers(1, 1999, (3, 5)), "pos_order": np.tile(np.arange(1, 6), (3, 1)),
             "neg_item_id": rng.integers(1, 1999, (3, 5)),
             "neg_order": np.tile(np.arange(6, 11), (3, 1)),
             "user_user_active_degree": np.array([0, 1, 2]), "item_category": np.array([1, 2, 3])}
    out = np.asarray(model(batch)["probability"])
    plain(batch)
    assert model.item_embedding.embeddings.shape == (2000, 8)
    assert plain.item_embedding.embeddings.shape == (1999, 8)
    assert model.vocab_sizes["item_id"] == 1999
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(again(batch)["probability"]), out, rtol=1e-6)
