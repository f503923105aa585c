"""Evaluation: the model's outputs over a whole split, then its kind's metrics.

`evaluate(model, dataset, kind, cfg)` runs the model compiled (`Model.predict`, with a
Keras progress bar), not eagerly batch by batch. The dataset yields `(features, label)`
batches in a fixed order (evaluation input is always read in order): one pass predicts
from the features, a second pass reads the labels and the kind's `evaluation_keys`
(for the CTR kind the raw user id, which GAUC groups by). The keys never go through the
model, so a 64-bit id keeps all its bits under JAX (int32 without x64) and a float key
keeps float32 under `mixed_bfloat16`. The kind's `metrics` then sees one array per
output and key for the whole split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from tfnegseq.kinds.base import ModelKind

LABEL = "label"


def _labelled(dataset: Any) -> bool:
    """Whether the elements are `(features, label)` pairs (else features dicts)."""
    return isinstance(dataset.element_spec, tuple)


def features_of(element: Any) -> Any:
    """The features of one element: `(features, label)` -> features; a dict as is."""
    return element[0] if isinstance(element, tuple) else element


def predict_outputs(model: keras.Model, dataset: Any,
                    verbose: int | str = "auto") -> dict[str, np.ndarray]:
    """Every output of `model` over `dataset` (`(features, label)` batches, or feature
    dicts without a label), concatenated over the batches. `predict` runs compiled, as
    the model was compiled (`jit_compile` of its `compile`; XLA where Keras' "auto"
    picks it otherwise)."""
    if _labelled(dataset):
        dataset = dataset.map(lambda features, label: features)
    out = model.predict(dataset, verbose=verbose)
    if not isinstance(out, dict):
        out = {"output": out}
    return {k: np.asarray(v) for k, v in out.items()}


def read_keys(dataset: Any, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The labels (when the elements have them) and the named features of `dataset`,
    concatenated, in its order."""
    labelled = _labelled(dataset)
    parts: dict[str, list[np.ndarray]] = {**({LABEL: []} if labelled else {}),
                                          **{k: [] for k in keys}}
    for element in dataset.as_numpy_iterator():
        features = features_of(element)
        if labelled:
            parts[LABEL].append(np.asarray(element[1]))
        for k in keys:
            if k not in features:
                raise KeyError(f"evaluation key {k!r} is not in the evaluation input; "
                               f"found {sorted(features)}")
            parts[k].append(np.asarray(features[k]))
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def evaluate(model: keras.Model, dataset: Any, kind: ModelKind, cfg: Any,
             verbose: int | str = "auto") -> dict[str, Any]:
    """The kind's metrics of `model` on `dataset` (`(features, label)` batches)."""
    outputs = predict_outputs(model, dataset, verbose=verbose)
    keys = read_keys(dataset, kind.evaluation_keys(cfg))
    rows = {len(v) for v in outputs.values()} | {len(v) for v in keys.values()}
    if len(rows) != 1:
        raise RuntimeError(f"evaluation read different row counts per pass: {sorted(rows)}")
    return kind.metrics({**outputs, **keys})
