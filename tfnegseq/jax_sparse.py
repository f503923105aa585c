"""Row-sparse embedding updates under the JAX backend (JAX-specific, like `runtime.py` is
TensorFlow-specific; layers and models never import it at module level).

Under JAX the gradient of `table[ids]` with respect to `table` is a dense `[V, d]` array,
and Keras' Adam then reads and writes every row of every table each step: for a
5,000,000 x 64 item table that is gigabytes of memory traffic a step, the bound of a
GPU training step. `train_step` below is the `train_step` under JAX of a model whose
`tfnegseq.embeddings.EmbeddingTables` has `row_sparse_gradients=True` (compiled with
`RowSparseAdam`, or `Adam` without amsgrad):

1. A shape probe (`jax.eval_shape`, no compute) records every embedding lookup the
   forward pass makes through `EmbeddingTables.gather`: which table, and how many ids.
2. The forward pass runs with each lookup replaced by
   `stop_gradient(table)[ids] + delta`, `delta` a zero `[N, d]` input per lookup, and
   returns the ids it looked up. Differentiating with respect to the deltas gives the
   gradient of every looked-up slice (`[N, d]`), never a `[V, d]` array.
3. Every variable other than the tables gets the optimizer's normal (dense) update,
   which also advances `iterations` once; each table gets `lazy_adam_rows` of
   `tfnegseq.optimizers` on the rows the batch used (repeats summed first):
   `jnp.unique` with a static size numbers the distinct rows, then one gather and one
   scatter each of the weights, `m` and `v`. A table with no more rows than the
   batch's slices gets the same update as one masked pass over the table.

The result is the lazy Adam that `RowSparseAdam` applies under TensorFlow (module
docstring of `tfnegseq.optimizers`; tested against numpy in `tests/test_jax_sparse.py`).
Tables are read in float32 whatever the dtype policy. A table must be read only
through `EmbeddingTables.gather`: a direct read of it would get no gradient here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import keras
from keras import ops

from tfnegseq.keras_internals import unpack_x_y_sample_weight
from tfnegseq.optimizers import lazy_adam_masked, lazy_adam_rows, lazy_adam_step_size


@dataclass
class SliceCapture:
    """Set as `EmbeddingTables.capture` while the forward pass is traced.

    Attributes:
        deltas: list of `[N, d]` arrays, one per lookup, added to the looked-up rows;
            None for the shape probe.
        lookups: `(table index in trainable_variables, N, d)` per lookup, in call order.
        ids: the flat ids `[N]` of every lookup, in call order.
    """

    deltas: list[Any] | None = None
    lookups: list[tuple[int, int, int]] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)

    def gather(self, model, tables, table, ids):
        """`table[ids]` `[*ids.shape, d]`, float32, differentiable through the delta only."""
        flat = ops.reshape(ids, (-1,))  # [N]
        index = len(self.ids)
        dim = int(table.shape[1])
        self.ids.append(flat)
        self.lookups.append((tables.table_index(model, table), int(flat.shape[0]), dim))
        values = tables.read(table)  # the float32 table, not a bf16 copy of it
        rows = ops.take(ops.stop_gradient(values), flat, axis=0)  # [N, d]
        if self.deltas is not None:
            rows = rows + self.deltas[index]
        return ops.reshape(rows, (*ids.shape, dim))  # [*ids.shape, d]


def _sparse_update(w, m, v, ids, slot_grads, alpha, beta_1, beta_2, epsilon):
    """Lazy Adam on the rows `ids` [N] of `w`, `m`, `v` [V, d]; repeats summed.

    `slot_grads` [N, d] is the gradient of each looked-up slice. Returns the new
    `(w, m, v)`; rows not in `ids` are returned unchanged (bit for bit).
    """
    num_rows, num_slices = w.shape[0], ids.shape[0]
    if num_rows <= num_slices:  # one masked pass over a small table (same result)
        return lazy_adam_masked(w, m, v, ids, slot_grads, alpha, beta_1, beta_2, epsilon)
    # Distinct rows, sorted, padded to N with `num_rows` (out of range: gathers read
    # zeros there and scatters drop those rows); `inverse` [N] numbers each slice's row.
    rows, inverse = jnp.unique(ids, size=num_slices, fill_value=num_rows, return_inverse=True)
    g = jax.ops.segment_sum(slot_grads, inverse.reshape(-1), num_segments=num_slices)  # [N, d]

    def take(a):
        return a.at[rows].get(mode="fill", fill_value=0, indices_are_sorted=True)  # [N, d]

    def put(a, new_rows):
        return a.at[rows].set(new_rows, mode="drop", indices_are_sorted=True)  # [V, d]

    w_rows, m_rows, v_rows = lazy_adam_rows(take(w), take(m), take(v), g, alpha, beta_1,
                                            beta_2, epsilon)
    return put(w, w_rows), put(m, m_rows), put(v, v_rows)


def check_optimizer(optimizer) -> None:
    """Refuse an optimizer whose update the row-sparse step cannot reproduce."""
    if not isinstance(optimizer, keras.optimizers.Adam) or optimizer.amsgrad:
        raise ValueError(
            "row-sparse embedding updates under JAX need RowSparseAdam (or Adam without "
            f"amsgrad); got {type(optimizer).__name__}"
            + (" with amsgrad=True" if getattr(optimizer, "amsgrad", False) else "")
        )
    for name in ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay"):
        if getattr(optimizer, name, None):
            raise ValueError(
                f"row-sparse embedding updates under JAX do not support `{name}` (it "
                f"would need every row's gradient). Received: {name}="
                f"{getattr(optimizer, name)}"
            )
    if optimizer.use_ema or optimizer.loss_scale_factor is not None:
        raise ValueError("row-sparse embedding updates under JAX support neither EMA nor "
                         "loss scaling")
    if optimizer.gradient_accumulation_steps:
        raise ValueError("row-sparse embedding updates under JAX do not support "
                         "`gradient_accumulation_steps`")


def train_step(model, tables, state, data):
    """`keras.Model.train_step` of the JAX trainer, with row-sparse table updates.

    Same contract as Keras' `JAXTrainer.train_step`: `state` is `(trainable,
    non_trainable, optimizer, metrics)` variable values, the return is `(logs, state)`.
    `tables` is the model's `EmbeddingTables`, through which it reads every table.
    """
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = unpack_x_y_sample_weight(data)
    optimizer = model.optimizer
    check_optimizer(optimizer)

    def forward(trainable_, non_trainable_, x_, capture):
        tables.capture = capture
        try:
            return model.compute_loss_and_updates(
                trainable_, non_trainable_, metrics_variables, x_, y, sample_weight,
                training=True, optimizer_variables=optimizer_variables,
            )
        finally:
            tables.capture = None

    probe = SliceCapture()
    jax.eval_shape(lambda t, n, x_: forward(t, n, x_, probe)[0], trainable, non_trainable, x)
    deltas = [jnp.zeros((num, dim), trainable[table].dtype)
              for table, num, dim in probe.lookups]

    def loss_fn(trainable_, deltas_):
        capture = SliceCapture(deltas=deltas_)
        loss, aux = forward(trainable_, non_trainable, x, capture)
        if capture.lookups != probe.lookups:
            raise RuntimeError("the model's embedding lookups changed between two traces")
        return loss, (aux, capture.ids)

    (_, (aux, ids)), (grads, slot_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(trainable, deltas)
    unscaled_loss, y_pred, non_trainable, metrics_variables = aux

    tables = sorted({table for table, _, _ in probe.lookups})
    # The tables' dense gradients are zeros (stop_gradient). As None, the optimizer skips
    # them: their weights and moments come back as given (checked in the tests), no
    # [V, d] work is traced, and `iterations` still advances once for the whole step.
    grads = [None if i in tables else g for i, g in enumerate(grads)]
    opt_index = {id(v): k for k, v in enumerate(optimizer.variables)}
    # Lazy Adam constants at this step (before the dense update advances `iterations`).
    mapping = list(zip(optimizer.variables, optimizer_variables, strict=True))
    with keras.StatelessScope(state_mapping=mapping):
        step = ops.cast(optimizer.iterations + 1, "float32")
        lr = ops.cast(optimizer._get_current_learning_rate(), "float32")
    beta_1, beta_2 = optimizer.beta_1, optimizer.beta_2
    alpha = lazy_adam_step_size(lr, beta_1, beta_2, step)

    with warnings.catch_warnings():  # the tables' None gradients are on purpose
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        new_trainable, new_optimizer = optimizer.stateless_apply(
            optimizer_variables, grads, trainable)
    new_trainable, new_optimizer = list(new_trainable), list(new_optimizer)
    for table in tables:
        variable = model.trainable_variables[table]
        k = optimizer._get_variable_index(variable)
        m_at = opt_index[id(optimizer._momentums[k])]
        v_at = opt_index[id(optimizer._velocities[k])]
        lookups = [i for i, (t, _, _) in enumerate(probe.lookups) if t == table]
        table_ids = jnp.concatenate([ids[i].astype("int32") for i in lookups])  # [N]
        table_grads = jnp.concatenate([slot_grads[i] for i in lookups]).astype("float32")
        w, m, v = _sparse_update(
            trainable[table], optimizer_variables[m_at], optimizer_variables[v_at],
            table_ids, table_grads, alpha, beta_1, beta_2, optimizer.epsilon)
        new_trainable[table], new_optimizer[m_at], new_optimizer[v_at] = w, m, v

    logs, metrics_variables = model._update_metrics_variables(
        metrics_variables, unscaled_loss, x, y, y_pred, sample_weight)
    return logs, (new_trainable, non_trainable, new_optimizer, metrics_variables)
