"""Early stopping on the validation split (`train.early_stopping_metric`)."""

import json
import os

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tfnegseq import train
from tfnegseq.config import ConfigError, load_config
from tfnegseq.data.input import make_dataset

CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "synthetic.yaml")


def _valid_auc(model, cfg, split="valid") -> float:
    """AUC of `model` on a split (valid by default), with sklearn, on the scores of
    `model.predict`: the compiled path training validates with. (An eager call's float32
    scores differ in the last bits, which reorders near-ties and moves a small split's
    AUC by ~1e-3.)"""
    ds = make_dataset(cfg.output.dir, split, cfg, 256)
    scores = model.predict(ds.map(lambda f, y: f), verbose=0)["probability"]
    labels = np.concatenate([np.asarray(y) for _, y in ds])
    return float(roc_auc_score(labels, np.asarray(scores, np.float64).reshape(-1)))


def test_the_best_validated_weights_are_restored(tiny_samples, tmp_path):
    cfg, sets, _ = tiny_samples
    cfg = load_config(CONFIG, sets + [
        f"train.run_dir={tmp_path}/run", "train.epochs=4", "train.learning_rate=0.01",
        "train.early_stopping_metric=auc", "train.early_stopping_patience=10",
        "train.test_at_validation=true"])
    train.run_config(cfg, verbose=0)
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    v = saved["validation"]
    assert [h["epoch"] for h in v["history"]] == [1, 2, 3, 4]
    aucs = [h["auc"] for h in v["history"]]
    # a model that learned something (at 0.05 it sometimes collapsed to one constant score,
    # every AUC 0.5, and the check below compared ties)
    assert max(aucs) > 0.52
    assert v["best_epoch"] == 1 + int(np.argmax(aucs))
    assert v["stopped_epoch"] is None
    # `selected` picks each metric's best valid epoch and holds the test metrics of
    # that epoch's model: the checkpoint of the epoch, scored here with sklearn
    best_ll = min(v["history"], key=lambda h: h["logloss"])
    assert v["selected"]["logloss"]["epoch"] == best_ll["epoch"]
    assert v["selected"]["auc"]["epoch"] == 1 + int(np.argmax(aucs))
    assert all("test" not in h for h in v["history"])  # test is not scored per validation
    for metric in ("auc", "logloss"):
        chosen = v["selected"][metric]
        assert set(chosen["test"]) >= {"auc", "gauc", "logloss"}
        at_epoch = keras.saving.load_model(tmp_path / "run" / "model.keras")
        at_epoch.load_weights(
            tmp_path / "run" / "checkpoints" / f"epoch_{chosen['epoch']:03d}.weights.h5")
        assert chosen["test"]["auc"] == pytest.approx(_valid_auc(at_epoch, cfg, "test"),
                                                      abs=1e-6), metric
    # the saved model is the best validated one: its valid AUC (sklearn) is the best
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert _valid_auc(model, cfg) == pytest.approx(max(aucs), abs=1e-6)
    # and the checkpoint of that epoch has the same weights
    best = keras.saving.load_model(tmp_path / "run" / "model.keras")
    best.load_weights(tmp_path / "run" / "checkpoints" / f"epoch_{v['best_epoch']:03d}.weights.h5")
    for a, b in zip(model.get_weights(), best.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


class _Interrupt(Exception):
    pass


@pytest.mark.slow  # an interrupted run and its resumption: about 70 s
def test_a_resumed_run_keeps_the_validations_before_the_interruption(tiny_samples, tmp_path):
    """Killed at the start of epoch 3 and rerun: metrics.json's validation covers all 4
    epochs, the 2 before the interruption with the values they had then, and the
    state beside the backup is gone once the run is finished."""
    cfg, sets, _ = tiny_samples
    cfg = load_config(CONFIG, sets + [
        f"train.run_dir={tmp_path}/run", "train.epochs=4", "train.learning_rate=0.01",
        "train.early_stopping_metric=auc", "train.early_stopping_patience=10",
        "train.test_at_validation=true", "train.export=false"])
    before = []

    class StopAtEpoch3(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise _Interrupt()

        def on_epoch_end(self, epoch, logs=None):
            before.append(logs["val_auc"])

    with pytest.raises(_Interrupt):
        train.run_config(cfg, verbose=0, extra_callbacks=[StopAtEpoch3()])
    assert os.path.exists(tmp_path / "run" / "backup" / "validation" / "state.json")
    keras.backend.clear_session()
    m = train.run_config(cfg, verbose=0)
    v = m["validation"]
    assert m["resumed_from_epoch"] == 2
    assert [h["epoch"] for h in v["history"]] == [1, 2, 3, 4]
    assert [h["auc"] for h in v["history"][:2]] == before
    aucs = [h["auc"] for h in v["history"]]
    assert v["best_epoch"] == 1 + int(np.argmax(aucs))
    assert v["selected"]["auc"]["test"] is not None
    assert not os.path.exists(tmp_path / "run" / "backup")


def _resume_cfg(tiny_samples, tmp_path, *extra):
    cfg, sets, _ = tiny_samples
    return load_config(CONFIG, sets + [
        f"train.run_dir={tmp_path}/run", "train.early_stopping_metric=auc",
        "train.test_at_validation=true", "train.export=false", *extra])


def _kill_at_evaluate(monkeypatch, call):
    """`tfnegseq.validation.evaluate` raises `_Interrupt` at its `call`-th call (1-based)
    and works normally afterwards; returns the count."""
    import tfnegseq.validation as validation

    real, calls = validation.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise _Interrupt()
        return real(*args, **kwargs)

    monkeypatch.setattr(validation, "evaluate", evaluate)
    return calls


class _EpochsBegun(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.begun = []

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch)


def _killed_then_rerun(cfg, monkeypatch, between=None):
    """Runs `cfg` until the kill the test patched in (`_Interrupt`), undoes the patches,
    calls `between()`, reruns it; returns the rerun's metrics and the epochs it began."""
    with pytest.raises(_Interrupt):
        train.run_config(cfg, verbose=0)
    monkeypatch.undo()
    if between is not None:
        between()
    keras.backend.clear_session()
    begun = _EpochsBegun()
    return train.run_config(cfg, verbose=0, extra_callbacks=[begun]), begun.begun


@pytest.mark.slow  # an interrupted run and its resumption: about 70 s
def test_a_run_killed_during_a_validation_has_that_epoch_validated_when_it_resumes(
        tiny_samples, tmp_path, monkeypatch):
    """Killed inside the validation of epoch 2 (after Keras' backup of epoch 2): the
    resumed run validates the backed-up model as epoch 2 before training epoch 3, so
    the history has every epoch, and epoch 2's AUC is that model's (sklearn)."""
    cfg = _resume_cfg(tiny_samples, tmp_path, "train.epochs=4", "train.learning_rate=0.01",
                      "train.early_stopping_patience=10")
    _kill_at_evaluate(monkeypatch, 2)
    backup, epoch_2 = tmp_path / "run" / "backup", tmp_path / "epoch_2.weights.h5"

    def keep_epoch_2():
        assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2
        epoch_2.write_bytes((backup / "latest.weights.h5").read_bytes())

    m, begun = _killed_then_rerun(cfg, monkeypatch, keep_epoch_2)
    v = m["validation"]
    assert m["resumed_from_epoch"] == 2 and begun == [2, 3]
    assert [h["epoch"] for h in v["history"]] == [1, 2, 3, 4]
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    model.optimizer.build(model.trainable_variables)  # the backup holds its state too
    model.load_weights(epoch_2)
    assert v["history"][1]["auc"] == pytest.approx(_valid_auc(model, cfg), abs=1e-6)


@pytest.mark.slow  # an interrupted run and its resumption: about 40 s
def test_a_run_killed_after_early_stopping_fired_trains_no_further(tiny_samples, tmp_path,
                                                                   monkeypatch):
    """Stopped early at epoch 3 (patience 2, nothing improves), then killed while the
    test split of the selected epochs was scored: the rerun resumes after epoch 3,
    trains no epoch, and finishes the run as the uninterrupted one would have."""
    cfg = _resume_cfg(tiny_samples, tmp_path, "train.epochs=6", "train.learning_rate=1e-12",
                      "train.early_stopping_patience=2")
    _kill_at_evaluate(monkeypatch, 4)  # 3 validations, then the first test scoring
    m, begun = _killed_then_rerun(cfg, monkeypatch)
    v = m["validation"]
    assert m["resumed_from_epoch"] == 3 and begun == []
    assert v["stopped_epoch"] == 3 and v["best_epoch"] == 1
    assert [h["epoch"] for h in v["history"]] == [1, 2, 3]
    assert v["selected"]["auc"]["test"] is not None
    assert not os.path.exists(tmp_path / "run" / "backup")


@pytest.mark.slow  # an interrupted run and its resumption: about 40 s
def test_a_run_killed_while_keras_writes_its_backup_resumes_from_the_epoch_before(
        tiny_samples, tmp_path, monkeypatch):
    """Killed while Keras rewrote `latest.weights.h5` at the end of epoch 3 (the file
    left truncated): the rerun resumes after epoch 2 from the previous copy, instead of
    failing on the truncated file."""
    cfg = _resume_cfg(tiny_samples, tmp_path, "train.epochs=4", "train.learning_rate=0.01",
                      "train.early_stopping_patience=10")
    real, saves = keras.Model.save_weights, []

    def save_weights(self, filepath, *args, **kwargs):
        real(self, filepath, *args, **kwargs)
        if str(filepath).endswith("latest.weights.h5"):
            saves.append(filepath)
            if len(saves) == 3:
                with open(filepath, "r+b") as f:
                    f.truncate(os.path.getsize(filepath) // 2)
                raise _Interrupt()

    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    m, begun = _killed_then_rerun(cfg, monkeypatch)
    assert m["resumed_from_epoch"] == 2 and begun == [2, 3]
    assert [h["epoch"] for h in m["validation"]["history"]] == [1, 2, 3, 4]


def test_a_backup_without_its_weights_is_refused_not_resumed_from_scratch(
        tiny_samples, tmp_path):
    """A backup whose weights file is gone (a kill while Keras removed the folder) is
    refused with an error naming the file; Keras alone would resume "after epoch 2"
    from freshly initialised weights."""
    cfg = _resume_cfg(tiny_samples, tmp_path, "train.epochs=4",
                      "train.early_stopping_patience=10")

    class StopAtEpoch3(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise _Interrupt()

    with pytest.raises(_Interrupt):
        train.run_config(cfg, verbose=0, extra_callbacks=[StopAtEpoch3()])
    backup = tmp_path / "run" / "backup"
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        (backup / name).unlink(missing_ok=True)
    keras.backend.clear_session()
    with pytest.raises(ConfigError, match=r"latest\.weights\.h5' is missing"):
        train.run_config(cfg, verbose=0)


def test_training_stops_after_patience_validations_without_improvement(tiny_samples, tmp_path):
    cfg, sets, _ = tiny_samples
    # a learning rate too small to move the AUC: no validation improves on the first
    cfg = load_config(CONFIG, sets + [
        f"train.run_dir={tmp_path}/run", "train.epochs=6", "train.learning_rate=1e-12",
        "train.early_stopping_metric=auc", "train.early_stopping_patience=2"])
    train.run_config(cfg, verbose=0)
    v = json.load(open(tmp_path / "run" / "metrics.json"))["validation"]
    assert v["best_epoch"] == 1
    assert v["stopped_epoch"] == 3
    assert [h["epoch"] for h in v["history"]] == [1, 2, 3]


@pytest.mark.parametrize("sets, says", [
    (["train.early_stopping_metric=hr@10"],
     "train.early_stopping_metric: must be one of the 'ctr' kind's metrics"),
    (["train.early_stopping_metric=auc", "train.eval_split=valid"],
     "eval_split: early stopping selects the weights on 'valid'"),
    (["train.early_stopping_patience=0"], "early_stopping_patience: must be >= 1"),
])
def test_early_stopping_config_mistakes_are_refused_at_load(sets, says):
    with pytest.raises(ConfigError, match=says):
        load_config(CONFIG, sets)


class _ScriptedKind:
    metric_keys = ("auc", "logloss")


@pytest.mark.parametrize("metric, values, best, stop", [
    ("auc", [0.5, 0.7, 0.6, 0.65, 0.9], 2, 4),  # patience 2: epochs 3, 4 do not improve
    ("logloss", [0.7, 0.6, 0.65, 0.5, 0.55, 0.58], 4, 6),  # lower is better
])
def test_callback_keeps_and_restores_the_best_weights(monkeypatch, metric, values, best, stop):
    """Scripted validations: the weights of the best epoch come back at the end, and
    training stops after `patience` validations without improvement."""
    from types import SimpleNamespace

    from tfnegseq import validation

    script = iter(values)
    monkeypatch.setattr(validation, "evaluate", lambda *a, **k: {metric: next(script)})
    cfg = SimpleNamespace(train=SimpleNamespace(
        early_stopping_metric=metric, early_stopping_patience=2, validate_every=1))
    kind = _ScriptedKind()
    kind.metric_keys = (metric,)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback = validation.ValidationCallback(None, kind, cfg)
    callback.set_model(model)
    model.stop_training = False  # as fit sets it
    epoch = 0
    while not model.stop_training and epoch < len(values):
        model.set_weights([np.full((2, 1), epoch + 1.0), np.full((1,), -(epoch + 1.0))])
        logs = {}
        callback.on_epoch_end(epoch, logs)
        assert logs[f"val_{metric}"] == values[epoch]
        epoch += 1
    assert callback.stopped_epoch == stop and epoch == stop
    callback.on_train_end()
    np.testing.assert_array_equal(model.get_weights()[0], np.full((2, 1), float(best)))
    summary = callback.summary()
    assert summary["best_epoch"] == best and summary["best_value"] == values[best - 1]


def test_selected_reports_test_metrics_at_each_metrics_best_validation(monkeypatch):
    """Two metrics whose validation optima fall at different epochs: each is reported
    with the test metrics of its own best validation epoch's model (scored when
    training ends, once per selected epoch), never the test optimum."""
    from types import SimpleNamespace

    from tfnegseq import validation

    valid = {1: {"auc": 0.7, "mrr": 0.1}, 2: {"auc": 0.6, "mrr": 0.3},
             3: {"auc": 0.65, "mrr": 0.2}}
    test = {1: {"auc": 0.5, "mrr": 0.9}, 2: {"auc": 0.9, "mrr": 0.0},
            3: {"auc": 0.99, "mrr": 0.99}}
    tested = []

    def evaluate(model, ds, *a, **k):  # the model's weight says which epoch it is
        epoch = int(round(float(model.get_weights()[0][0, 0])))
        if ds == "test":
            tested.append(epoch)
        return (valid if ds == "valid" else test)[epoch]

    monkeypatch.setattr(validation, "evaluate", evaluate)
    cfg = SimpleNamespace(train=SimpleNamespace(
        early_stopping_metric="mrr", early_stopping_patience=5, validate_every=1))
    kind = SimpleNamespace(metric_keys=("auc", "mrr"))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback = validation.ValidationCallback("valid", kind, cfg, test_dataset="test")
    callback.set_model(model)
    model.stop_training = False
    for epoch in range(3):  # "training" moves the weights to the epoch's number
        model.set_weights([np.full((1, 1), epoch + 1.0), np.zeros(1)])
        callback.on_epoch_end(epoch, {})
    assert tested == []  # nothing scored on test during training
    callback.on_train_end()
    assert tested == [1, 2]  # the selected epochs only, each once
    selected = callback.summary()["selected"]
    assert selected["auc"] == {"epoch": 1, "valid": 0.7, "test": {"auc": 0.5, "mrr": 0.9}}
    assert selected["mrr"] == {"epoch": 2, "valid": 0.3, "test": {"auc": 0.9, "mrr": 0.0}}
    assert float(model.get_weights()[0][0, 0]) == 2.0  # the stopping metric's best restored


def test_in_memory_reads_the_source_once_and_keeps_its_order():
    """`in_memory`: the same elements in the same order, the source read by one pass
    only, however often the result is read (and a partial read after it is harmless)."""
    import tensorflow as tf

    from tfnegseq import validation

    reads = []

    def source():
        reads.append(1)
        yield from range(7)

    ds = tf.data.Dataset.from_generator(source, output_signature=tf.TensorSpec([], tf.int64))
    cached = validation.in_memory(ds.batch(3))
    assert len(reads) == 1
    for _ in range(3):
        assert [b.numpy().tolist() for b in cached] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b.numpy().tolist() for b in cached.take(1)] == [[0, 1, 2]]
    assert len(reads) == 1


@pytest.mark.parametrize("caches", [True, False])
def test_callback_caches_the_inputs_of_a_kind_that_asks(monkeypatch, caches):
    """`cache_validation_input`: both inputs go to memory at the first validation and
    every validation after it reads those same cached inputs; otherwise the datasets
    are passed through as given."""
    from types import SimpleNamespace

    import tensorflow as tf

    from tfnegseq import validation

    seen = []
    monkeypatch.setattr(validation, "evaluate",
                        lambda model, ds, *a, **k: seen.append(ds) or {"auc": 0.5})
    cfg = SimpleNamespace(train=SimpleNamespace(
        early_stopping_metric="auc", early_stopping_patience=5, validate_every=2))
    kind = SimpleNamespace(metric_keys=("auc",), cache_validation_input=caches)
    valid, test = tf.data.Dataset.range(4), tf.data.Dataset.range(3)
    callback = validation.ValidationCallback(valid, kind, cfg, test_dataset=test)
    callback.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    for epoch in range(4):  # validations after epochs 2 and 4
        callback.on_epoch_end(epoch, {})
    callback.on_train_end()  # the test split: once, for the selected epoch
    assert len(seen) == 3
    assert seen[0] is seen[1]  # the same inputs every validation
    assert (seen[0] is valid, seen[2] is test) == (not caches, not caches)
    assert [int(x) for x in seen[0]] == [0, 1, 2, 3] and [int(x) for x in seen[2]] == [0, 1, 2]


@pytest.mark.slow
def test_sequential_validation_in_memory_gives_the_same_run(tmp_path, monkeypatch):
    """A sequential run with early stopping and test scores at the selected epochs
    (deterministic input): the same validation history and metrics whether the
    validation inputs are kept in memory (the kind's default) or re-read every time."""
    from tests.helpers_data import write_log
    from tfnegseq.config import config_from_dict
    from tfnegseq.data import job
    from tfnegseq.kinds.sequential import SEQUENTIAL

    write_log(tmp_path / "log", np.random.default_rng(3), users=16, per_user=40)

    def cfg(name):
        return config_from_dict({
            "name": name,
            "source": {"kind": "kuairec", "path": str(tmp_path / "log")},
            "rules": {"label": [], "positive": ["watch_ratio >= 2.0"],
                      "negative": ["watch_ratio < 0.5"]},
            "samples": {"task": "sequential", "min_core": 1, "max_sequence": 50},
            "output": {"dir": str(tmp_path / "samples"), "shards": 2},
            "vocab": {"min_count": 1, "oov_buckets": 1},
            "model": {"kind": "sequential", "architecture": "sine", "embedding_dim": 8,
                      "max_length": 12, "num_blocks": 1, "num_heads": 1,
                      "num_interests": 2, "dropout": 0.2},
            "train": {"epochs": 4, "batch_size": 4, "eval_split": "test",
                      "jit_compile": False, "deterministic_input": True,
                      "early_stopping_metric": "ndcg@10", "validate_every": 2,
                      "test_at_validation": True, "keep_checkpoints": 0,
                      "export": False, "run_dir": str(tmp_path / name)},
        })

    job.run(cfg("samples"))
    assert SEQUENTIAL.cache_validation_input
    cached = train.run_config(cfg("cached"), verbose=0)
    monkeypatch.setattr(SEQUENTIAL, "cache_validation_input", False)
    reread = train.run_config(cfg("reread"), verbose=0)
    assert len(cached["validation"]["history"]) == 2
    assert cached["validation"]["history"] == reread["validation"]["history"]
    for k in SEQUENTIAL.metric_keys:
        assert cached[k] == reread[k], k


def test_a_resumed_callback_continues_the_same_validation(monkeypatch, tmp_path):
    """Scripted validations over 6 epochs, with and without an interruption after epoch
    3 (a new callback restores the state the first wrote): the same patience count, the
    same restored best weights and the same per-metric selection with its test metrics.
    Without the state, the resumed callback would select epoch 5 for auc (0.8), not 2."""
    from types import SimpleNamespace

    from tfnegseq import validation

    valid = {1: {"auc": 0.6, "mrr": 0.1}, 2: {"auc": 0.9, "mrr": 0.2},
             3: {"auc": 0.7, "mrr": 0.4}, 4: {"auc": 0.5, "mrr": 0.3},
             5: {"auc": 0.8, "mrr": 0.35}, 6: {"auc": 0.85, "mrr": 0.38}}
    test = {e: {"auc": e / 10, "mrr": e / 100} for e in valid}

    def evaluate(model, ds, *a, **k):
        epoch = int(round(float(model.get_weights()[0][0, 0])))
        return (valid if ds == "valid" else test)[epoch]

    monkeypatch.setattr(validation, "evaluate", evaluate)
    cfg = SimpleNamespace(train=SimpleNamespace(
        early_stopping_metric="mrr", early_stopping_patience=3, validate_every=1))
    kind = SimpleNamespace(metric_keys=("auc", "mrr"))

    def run(epochs, state_dir, resume=False):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        callback = validation.ValidationCallback("valid", kind, cfg, test_dataset="test",
                                                 state_dir=state_dir)
        callback.set_model(model)
        assert callback.restore() == resume
        model.stop_training = False
        for epoch in epochs:
            if model.stop_training:
                break
            model.set_weights([np.full((1, 1), epoch + 1.0), np.zeros(1)])
            callback.on_epoch_end(epoch, {})
        return callback, model

    whole, whole_model = run(range(6), str(tmp_path / "whole"))
    whole.on_train_end()
    first, _ = run(range(3), str(tmp_path / "split"))  # killed after epoch 3: no train end
    # the files: the state, and the weights of epochs 2 (auc) and 3 (mrr) only
    assert sorted(os.listdir(tmp_path / "split")) == ["state.json", "weights_2.npz",
                                                      "weights_3.npz"]
    second, second_model = run(range(3, 6), str(tmp_path / "split"), resume=True)
    second.on_train_end()
    assert whole.stopped_epoch == second.stopped_epoch == 6  # mrr: best 3, then 3 worse
    assert second.summary() == whole.summary()
    assert second.summary()["selected"]["auc"] == {
        "epoch": 2, "valid": 0.9, "test": {"auc": 0.2, "mrr": 0.02}}
    np.testing.assert_array_equal(second_model.get_weights()[0], whole_model.get_weights()[0])
    assert float(second_model.get_weights()[0][0, 0]) == 3.0
