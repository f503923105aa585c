"""Evaluation: the model's outputs over a whole split, then its kind's metrics.

`evaluate(model, dataset, kind, cfg)` runs the model compiled (`Model.predict`, with a
Keras progress bar), not eagerly batch by batch. The dataset yields `(features, label)`
batches; the label and the kind's `evaluation_keys` (for the CTR kind the raw user id,
which GAUC groups by) are passed through the prediction beside the model's outputs, so
they stay aligned with the predictions of the same rows in any input order. The kind's
`metrics` then sees one array per output and key for the whole split.

Backend-agnostic (Keras' `predict`); only `with_labels` touches the tf.data dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from tfnegseq.kinds.base import ModelKind

LABEL = "label"


class _WithPassthrough(keras.Model):
    """`model(x)`'s outputs plus the named entries of `x`, unchanged."""

    def __init__(self, model: keras.Model, keys: Sequence[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model
        self.keys = tuple(keys)

    def call(self, inputs: Mapping[str, Any], training: bool | None = None) -> dict[str, Any]:
        out = self.model(inputs, training=False)
        if not isinstance(out, Mapping):
            out = {"output": out}
        return {**out, **{k: inputs[k] for k in self.keys}}


def with_labels(dataset: Any) -> Any:
    """`(features, label)` batches -> `features` with the label under `label`."""
    return dataset.map(lambda features, label: ({**features, LABEL: label},))


def predict_outputs(model: keras.Model, dataset: Any, keys: Sequence[str] = (),
                    jit_compile: bool | str = "auto", verbose: int | str = "auto"
                    ) -> dict[str, np.ndarray]:
    """Every output of `model` over `dataset` (features batches), plus the features
    `keys` passed through, each concatenated over the batches."""
    wrapper = _WithPassthrough(model, keys, name="evaluation")
    wrapper.compile(jit_compile=jit_compile)
    out = wrapper.predict(dataset, verbose=verbose)
    return {k: np.asarray(v) for k, v in out.items()}


def evaluate(model: keras.Model, dataset: Any, kind: ModelKind, cfg: Any,
             verbose: int | str = "auto") -> dict[str, Any]:
    """The kind's metrics of `model` on `dataset` (`(features, label)` batches)."""
    keys = (LABEL, *kind.evaluation_keys(cfg))
    outputs = predict_outputs(model, with_labels(dataset), keys,
                              jit_compile=cfg.train.jit_compile, verbose=verbose)
    return kind.metrics(outputs)
