"""Early stopping on the validation split (`train.early_stopping_metric`).

`ValidationCallback` computes the run's kind metrics on "valid" every
`train.validate_every` epochs (`tfnegseq.evaluate`, compiled prediction), puts them in
the epoch's logs as `val_<metric>` (Keras' progress line, TensorBoard), keeps the
weights of the best validation, stops training after `train.early_stopping_patience`
validations without improvement, and restores the best weights when training ends,
so the final evaluation scores the validated model. Higher is better for every metric
but `logloss`.

With `train.test_at_validation`, `summary()["selected"]` gives, for every metric, the
epoch whose *validation* value was best and the metrics on `train.eval_split` ("test")
of the model of that epoch: model selection per metric without touching the test split
(two protocols whose validation optima fall at different epochs are each reported at
their own optimum). The callback keeps in memory the weights of each metric's best
validation so far (one copy per distinct epoch: the metrics of one kind mostly agree)
and scores the test split once per selected epoch when training ends, instead of at
every validation; the numbers are the same (inference is deterministic and does not
touch the training state), the cost is one evaluation per selected epoch.

Resuming: with a `state_dir`, the callback writes its state after every validation
(`state.json`: history, best value and epoch, patience count, each metric's best; and
one `weights_<epoch>.npz` per kept weight copy, written before the JSON that names it
and removed once no metric selects it), and `restore()` reads it back, so a run
resumed by `tfnegseq.train` (BackupAndRestore) continues the same validation: the same
patience count, best weights and selected epochs as an uninterrupted run. A run killed
between the backup of a validation epoch and that epoch's validation has the backed-up
model validated before training goes on (`missed`, `validate`: `tfnegseq.train` does
it), and a run killed after early stopping fired (while the test split was scored, say)
trains no further. Without a `state_dir` the state lives in memory only.

A kind whose `cache_validation_input` is true (the sequential kind) has its validation
and test inputs parsed once, at the first validation, and kept in memory
(`in_memory`): every later validation, and the key pass of each evaluation, reads the
same batches from memory instead of re-reading and re-parsing the shards.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import keras
import numpy as np

from tfnegseq.evaluate import evaluate

LOWER_IS_BETTER = ("logloss",)


def in_memory(dataset: Any) -> Any:
    """`dataset.cache()` (in memory), filled by one whole pass now: the elements, in
    their order, of a deterministic `dataset` (an evaluation input), read from memory
    by every later pass. Filled here rather than by the first consumer, which may stop
    before the end of the input (a cache left unfinished is discarded)."""
    cached = dataset.cache()
    for _ in cached:
        pass
    return cached


class ValidationCallback(keras.callbacks.Callback):
    """See the module docstring.

    Args:
        dataset: the validation input (the kind's evaluation format).
        kind: ModelKind. Its `metrics` are computed.
        cfg: Config. `train.early_stopping_metric` (may be "" to validate without
            stopping), `early_stopping_patience`, `validate_every`.
        test_dataset: the evaluation input, scored at every validation too; None: not
            scored. Defaults to None.
        state_dir: str or None. Where the state is written after every validation
            (module docstring, "Resuming"); None: memory only. Defaults to None.
        write_state: bool. False: `restore` reads `state_dir` but nothing is written
            (the non-chief processes of a multi-process run). Defaults to True.
    """

    STATE_FILE = "state.json"

    def __init__(self, dataset: Any, kind: Any, cfg: Any, test_dataset: Any = None,
                 state_dir: str | None = None, write_state: bool = True) -> None:
        super().__init__()
        self.dataset, self.kind, self.cfg = dataset, kind, cfg
        self.test_dataset = test_dataset
        self.state_dir, self.write_state = state_dir, write_state
        tc = cfg.train
        self.metric = tc.early_stopping_metric
        self.patience = tc.early_stopping_patience
        self.every = tc.validate_every
        self.sign = -1.0 if self.metric in LOWER_IS_BETTER else 1.0
        self.best = -math.inf
        self.best_epoch: int | None = None
        self.best_weights: list[Any] | None = None
        self.waited = 0
        self.history: list[dict[str, Any]] = []
        self.stopped_epoch: int | None = None
        self._cache = bool(getattr(kind, "cache_validation_input", False))
        # test_at_validation: per metric (signed best validation value, its epoch), the
        # weights of every epoch some metric selects, and the test metrics scored at
        # the end for those epochs
        self._best_of: dict[str, tuple[float, int]] = {}
        self._weights_of: dict[int, list[Any]] = {}
        self._test_of: dict[int, dict[str, Any]] = {}

    def _cache_inputs(self) -> None:
        """The first validation of a kind that caches: both inputs to memory."""
        if self._cache:
            self._cache = False
            self.dataset = in_memory(self.dataset)
            if self.test_dataset is not None:
                self.test_dataset = in_memory(self.test_dataset)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every:
            return
        self._cache_inputs()
        result = evaluate(self.model, self.dataset, self.kind, self.cfg, verbose=0)
        scores = {k: float(result[k]) for k in self.kind.metric_keys if k in result}
        entry: dict[str, Any] = {"epoch": epoch + 1, **scores}
        if self.test_dataset is not None:
            self._keep_selected(epoch + 1, scores)
        self.history.append(entry)
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in scores.items()})
        if not self.metric:
            return
        value = self.sign * scores[self.metric]
        if value > self.best:
            self.best, self.best_epoch, self.waited = value, epoch + 1, 0
            # the copy `_keep_selected` just took, when it did (one copy per epoch)
            self.best_weights = self._weights_of.get(epoch + 1) or self.model.get_weights()
        else:
            self.waited += 1
            if self.waited >= self.patience:
                self.stopped_epoch = epoch + 1
                self.model.stop_training = True
        self._save_state()

    # ------------------------------------------------------------ resume state
    def _weights_path(self, epoch: int) -> str:
        assert self.state_dir is not None
        return os.path.join(self.state_dir, f"weights_{epoch}.npz")

    def _kept(self) -> dict[int, list[Any]]:
        kept = dict(self._weights_of)
        if self.best_weights is not None and self.best_epoch is not None:
            kept[self.best_epoch] = self.best_weights
        return kept

    def _save_state(self) -> None:
        """Writes the state (module docstring, "Resuming"): the weight files first, then
        `state.json` atomically, then the weight files it no longer names removed."""
        if not self.state_dir or not self.write_state:
            return
        os.makedirs(self.state_dir, exist_ok=True)
        kept = self._kept()
        for e, weights in kept.items():
            path = self._weights_path(e)
            if not os.path.exists(path):
                tmp = path + ".tmp.npz"
                np.savez(tmp, *weights)
                os.replace(tmp, path)
        state = {"history": self.history, "best": self.best, "best_epoch": self.best_epoch,
                 "waited": self.waited, "stopped_epoch": self.stopped_epoch,
                 "best_of": {k: [v, e] for k, (v, e) in self._best_of.items()},
                 "selected_epochs": sorted(self._weights_of), "weight_epochs": sorted(kept)}
        tmp = os.path.join(self.state_dir, self.STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, os.path.join(self.state_dir, self.STATE_FILE))
        for name in os.listdir(self.state_dir):
            if name.startswith("weights_") and name.endswith(".npz"):
                stem = name[len("weights_"):-len(".npz")]
                if stem.isdigit() and int(stem) not in kept:
                    os.remove(os.path.join(self.state_dir, name))

    def restore(self) -> bool:
        """Reads the state `state_dir` holds (a resumed run); False when there is none."""
        path = os.path.join(self.state_dir or "", self.STATE_FILE)
        if not self.state_dir or not os.path.exists(path):
            return False
        with open(path) as f:
            state = json.load(f)

        def load(e: int) -> list[Any]:
            with np.load(self._weights_path(e)) as z:
                return [z[f"arr_{i}"] for i in range(len(z.files))]

        loaded = {int(e): load(int(e)) for e in state["weight_epochs"]}
        self.history = list(state["history"])
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]
        self.waited, self.stopped_epoch = int(state["waited"]), state["stopped_epoch"]
        self._best_of = {k: (float(v), int(e)) for k, (v, e) in state["best_of"].items()}
        self._weights_of = {int(e): loaded[int(e)] for e in state["selected_epochs"]}
        self.best_weights = loaded.get(self.best_epoch) if self.best_epoch else None
        return True

    def missed(self, epochs_done: int) -> bool:
        """Whether a run resumed after `epochs_done` epochs lacks the validation of its
        last epoch (a validation epoch, not validated, no stop recorded)."""
        return (epochs_done > 0 and epochs_done % self.every == 0
                and self.stopped_epoch is None
                and all(h["epoch"] != epochs_done for h in self.history))

    def validate(self, model: Any, epoch: int) -> None:
        """Validates `model` as the end of epoch `epoch` (1-based) does in training: the
        history, the best weights, the patience count and the state on disk."""
        self.set_model(model)
        self.on_epoch_end(epoch - 1, None)

    def _keep_selected(self, epoch: int, scores: dict[str, float]) -> None:
        """Updates each metric's best validation (strictly better: the first epoch
        of a tie stays, as `selected` reads it) and keeps the weights of the epochs
        some metric selects, dropping the others'."""
        for k, v in scores.items():
            signed = (-1.0 if k in LOWER_IS_BETTER else 1.0) * v
            if k not in self._best_of or signed > self._best_of[k][0]:
                self._best_of[k] = (signed, epoch)
        wanted = {e for _, e in self._best_of.values()}
        if epoch in wanted:
            self._weights_of[epoch] = self.model.get_weights()
        for e in [e for e in self._weights_of if e not in wanted]:
            del self._weights_of[e]

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.test_dataset is not None:  # each selected epoch's model on the test split
            for e, weights in sorted(self._weights_of.items()):
                self.model.set_weights(weights)
                test = evaluate(self.model, self.test_dataset, self.kind, self.cfg, verbose=0)
                self._test_of[e] = {k: v for k, v in test.items() if isinstance(v, int | float)}
            self._weights_of.clear()
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def selected(self) -> dict[str, Any]:
        """Per metric: the epoch with the best validation value (the first on a tie)
        and, when test metrics were tracked, that epoch's test metrics."""
        out: dict[str, Any] = {}
        for k in self.kind.metric_keys:
            rows = [h for h in self.history if k in h]
            if not rows:
                continue
            sign = -1.0 if k in LOWER_IS_BETTER else 1.0
            best = max(rows, key=lambda h: sign * h[k])  # max keeps the first of ties
            out[k] = {"epoch": best["epoch"], "valid": best[k],
                      "test": self._test_of.get(best["epoch"])}
        return out

    def summary(self) -> dict[str, Any]:
        """What metrics.json records: every validation, the best epoch, the stop, and
        the per-metric selection (`selected`)."""
        return {
            "metric": self.metric or None,
            "best_epoch": self.best_epoch,
            "best_value": self.sign * self.best if self.best_epoch else None,
            "stopped_epoch": self.stopped_epoch,
            "selected": self.selected(),
            "history": self.history,
        }
