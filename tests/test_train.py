"""The training CLI: metrics against sklearn, resume after interruption, several seeds."""

import json
import os
import time

import keras
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from tfnegseq import train
from tfnegseq.config import load_config
from tfnegseq.data.input import make_dataset

CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "synthetic.yaml")


def test_run_writes_metrics_that_match_sklearn(tiny_samples, tmp_path):
    cfg, sets, _ = tiny_samples
    cfg = load_config(CONFIG, sets + [f"train.run_dir={tmp_path}/run", "train.epochs=2"])
    m = train.run_config(cfg, verbose=0)
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    for k in ("auc", "gauc", "logloss", "seed", "versions", "config",
              "train_examples_per_second"):
        assert k in saved
    assert saved["config"]["model"]["polarity"] == cfg.model.polarity
    # independent check: reload the saved model and score the eval split with sklearn
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    ds = make_dataset(cfg.output.dir, cfg.train.eval_split, cfg, 256)
    ys, ps = [], []
    for f, y in ds:
        ps.append(np.asarray(model(f)["probability"], np.float64))
        ys.append(np.asarray(y))
    y, p = np.concatenate(ys), np.concatenate(ps)
    assert m["eval_examples"] == len(y)
    # the run scored with its XLA-compiled predict, this reference with eager calls: the
    # float32 probabilities differ by ~1e-7, which can swap a near-tied pair and move
    # the AUC by 1 / (positives * negatives) per swap (5.4e-6 seen once in CI)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert m["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-5)
    assert os.listdir(tmp_path / "run" / "checkpoints")
    assert os.path.isdir(tmp_path / "run" / "tensorboard")


@pytest.mark.parametrize("keep, want", [(None, [1, 2, 3, 4]), (2, [3, 4]), (0, [])])
def test_keep_checkpoints(tiny_samples, tmp_path, keep, want):
    cfg, sets, _ = tiny_samples
    cfg = load_config(CONFIG, sets + [f"train.run_dir={tmp_path}/run", "train.epochs=4",
                                      "train.steps_per_epoch=2", "train.export=false",
                                      f"train.keep_checkpoints={'null' if keep is None else keep}"])
    train.run_config(cfg, verbose=0)
    names = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert names == [f"epoch_{e:03d}.weights.h5" for e in want]


def test_keep_checkpoints_refuses_negative():
    with pytest.raises(Exception, match="keep_checkpoints"):
        load_config(CONFIG, ["train.keep_checkpoints=-1"])


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("updates", ["dense", "row_sparse"])
def test_resumes_from_last_epoch_after_interruption(tiny_samples, tmp_path, updates):
    cfg, sets, _ = tiny_samples
    cfg = load_config(CONFIG, sets + [f"train.run_dir={tmp_path}/run", "train.epochs=3",
                                      f"train.embedding_updates={updates}"])

    steps_done = []

    first_seconds = []

    class StopAtEpoch2(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                steps_done.append(int(self.model.optimizer.iterations.numpy()))
                first_seconds.append(time.perf_counter() - self.t0)
                raise Interrupt()

    with pytest.raises(Interrupt):
        train.run_config(cfg, verbose=0, extra_callbacks=[StopAtEpoch2()])
    assert os.path.isdir(tmp_path / "run" / "backup")

    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, int(self.model.optimizer.iterations.numpy())))

    keras.backend.clear_session()
    m = train.run_config(cfg, verbose=0, extra_callbacks=[Record()])
    # epochs 0 and 1 were restored with the optimizer's state, only the last one ran
    assert seen == [(2, steps_done[0])] and steps_done[0] > 0
    # metrics.json says so; time and throughput cover the whole run (3 epochs)
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    assert saved["resumed_from_epoch"] == 2 == m["resumed_from_epoch"]
    assert saved["seconds"] > first_seconds[0] > 0
    assert not os.path.exists(tmp_path / "run" / "backup")  # a finished run keeps none


def test_throughput_leaves_out_the_compile_epoch_of_each_training_call():
    """examples/s leaves out the first epoch of the run and the first epoch after a
    resume (both compile), when there are others."""
    cb = train.throughput_callback(10, previous=[(100, 100.0), (100, 1.0)])
    cb.epochs += [(100, 50.0), (100, 1.0), (100, 2.0)]  # the resumed call's epochs
    assert cb.examples_per_second() == pytest.approx(300 / 4.0)
    fresh = train.throughput_callback(10)
    fresh.epochs += [(100, 100.0), (200, 2.0)]
    assert fresh.examples_per_second() == pytest.approx(100.0)


def test_seeds_summary_is_mean_and_std_of_runs(tiny_samples, tmp_path, capsys):
    cfg, sets, _ = tiny_samples
    args = ["--config", CONFIG, "--seeds", "0,1"]
    for s in sets + [f"train.run_dir={tmp_path}/multi", "train.epochs=1"]:
        args += ["--set", s]
    assert train.main(args) == 0
    summary = json.load(open(tmp_path / "multi" / "summary.json"))
    runs = [json.load(open(tmp_path / "multi" / f"seed_{s}" / "metrics.json")) for s in (0, 1)]
    for k in ("auc", "gauc", "logloss"):
        v = np.array([r[k] for r in runs])
        assert summary[k]["mean"] == pytest.approx(v.mean())
        assert summary[k]["std"] == pytest.approx(v.std(ddof=1))
    assert runs[0]["auc"] != runs[1]["auc"]  # the seed changes the run
    assert "auc:" in capsys.readouterr().out


@pytest.mark.slow  # trains the same run twice: about a minute
def test_deterministic_input_repeats_a_run_exactly(tiny_samples, tmp_path):
    """With `train.deterministic_input`, two runs of the same seed read the same batches
    in the same order and end with the same weights and metrics, bit for bit."""
    cfg, sets, _ = tiny_samples
    runs = []
    for name in ("a", "b"):
        c = load_config(CONFIG, sets + [f"train.run_dir={tmp_path}/{name}", "train.epochs=2",
                                        "train.deterministic_input=true"])
        metrics = train.run_config(c, verbose=0)
        model = keras.saving.load_model(tmp_path / name / "model.keras")
        runs.append((metrics, [np.asarray(w) for w in model.weights]))
    (m_a, w_a), (m_b, w_b) = runs
    for k in ("auc", "gauc", "logloss"):
        assert m_a[k] == m_b[k]
    assert len(w_a) == len(w_b)
    for a, b in zip(w_a, w_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_config_is_refused_with_the_key(tmp_path, capsys):
    rc = train.main(["--config", CONFIG, "--set", "model.positive_ratio=1.5"])
    assert rc == 2
    assert "model.positive_ratio" in capsys.readouterr().err


def test_missing_samples_are_named(tmp_path, capsys):
    rc = train.main(["--config", CONFIG, "--set", f"output.dir={tmp_path}/nothing"])
    assert rc == 2
    assert "nothing" in capsys.readouterr().err


def test_training_exports_a_servable_version(tiny_samples, tmp_path):
    cfg, sets, _ = tiny_samples
    cfg = load_config(CONFIG, sets + [f"train.run_dir={tmp_path}/run", "train.epochs=1",
                                      "train.export=true"])
    m = train.run_config(cfg, verbose=0)
    assert m["export"] == str(tmp_path / "run" / "export" / cfg.name / "1")
    assert os.path.exists(os.path.join(m["export"], "saved_model.pb"))
    assert json.load(open(tmp_path / "run" / "metrics.json"))["export"] == m["export"]


@pytest.mark.parametrize("change, named", [
    ("model.embedding_dim=8", "model.embedding_dim: 16 -> 8"),  # was: 14 objects not loaded
    ("model.polarity=pbe", "model.polarity: 'tapf' -> 'pbe'"),  # was: resumed silently
    ("train.learning_rate=0.01", "train.learning_rate: 0.001 -> 0.01"),  # was: silently
])
def test_resume_with_a_changed_config_is_refused(tiny_samples, tmp_path, capsys, change, named):
    cfg, sets, _ = tiny_samples
    run = sets + [f"train.run_dir={tmp_path}/run", "train.epochs=2", "train.steps_per_epoch=2"]

    class StopAtEpoch1(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise Interrupt()

    with pytest.raises(Interrupt):
        train.run_config(load_config(CONFIG, run), verbose=0, extra_callbacks=[StopAtEpoch1()])
    args = ["--config", CONFIG]
    for s in run + [change]:
        args += ["--set", s]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "interrupted run trained with a different config" in err and named in err
    assert f"delete {tmp_path}/run/backup" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, says", [
    (["--config", "{tmp}"], "is a directory, not a config file"),
    (["--config", CONFIG, "--seeds", "a,b"], "--seeds: expected comma-separated integers"),
    (["--config", CONFIG, "--seeds", "1,1"], "--seeds: expected distinct integers"),
    (["--config", CONFIG, "--set", "samples.task=sequential"], "samples.task: model.kind 'ctr'"),
])
def test_user_mistakes_get_one_line_and_exit_2(tmp_path, capsys, args, says):
    rc = train.main([a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err
    assert rc == 2 and says in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, says", [
    (["--config", "/nonexistent.yaml"], "/nonexistent.yaml: config file not found"),
    (["--config", CONFIG, "--set", "simulate.num_users=0"], "simulate.num_users: must be >= 1"),
])
def test_simulate_cli_mistakes_get_one_line_and_exit_2(capsys, argv, says):
    from tfnegseq.data import simulate

    assert simulate.main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
