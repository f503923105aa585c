"""Row-sparse (lazy) Adam for large embedding tables.

A batch of 2048 examples with 100-token sequences reads at most ~207,000 rows of the
item table, whatever its size. Keras' `Adam` updates every row of every table each step
(the moments of an unused row decay, and the row moves by its momentum): for a
5,000,000 x 64 table that is ~6 GB of memory traffic a step, more than the model.
`RowSparseAdam` updates only the rows a batch uses when the gradient says which rows
those are, and is Keras' `Adam` for every other variable.

Semantics (the "lazy Adam" of TensorFlow Addons' `LazyAdam` and PyTorch's `SparseAdam`):
for the rows `r` named by the gradient, with `g_r` the sum of the gradient rows for `r`
(a row used `n` times gets the sum of its `n` gradients, as a dense gradient would),

    m_r <- beta_1 m_r + (1 - beta_1) g_r
    v_r <- beta_2 v_r + (1 - beta_2) g_r^2
    w_r <- w_r - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m_r / (sqrt(v_r) + epsilon)

with `t` the optimizer's global step, exactly Keras' `Adam` formula; rows not named keep
their weights and moments. On the first step from zero moments this is the same as
dense Adam for every row (an unused row's dense update is `0 / epsilon = 0`); later,
dense Adam keeps moving rows that were used before, lazy Adam does not.

Which gradients are row-sparse: under the TensorFlow backend, the gradient of a plain
`ops.take(table, ids)` is a `tf.IndexedSlices` (rows and their indices, repeats not
summed). `CtrModel(row_sparse_gradients=True)` looks its tables up that way (the
default `take_rows` gradient is a dense segment sum). Every other gradient gets the
dense Adam update. The sparse update is a handful of gathers and scatters of the
batch's `N` gradient slices (N = B * (L + 1) for the item table), static shapes that
work inside `jit_compile` (XLA), so its cost does not grow with the table; it keeps one
int32 per table row as scratch. A table with at most `N` rows gets the same lazy update
as one masked pass over the table instead.

Under JAX the gradient of a gather is always a dense array, so `update_step` only ever
sees dense gradients there; `CtrModel(row_sparse_gradients=True)` then trains with its
own step (`tfnegseq/jax_sparse.py`), which differentiates with respect to the looked-up
rows instead of the tables and applies `lazy_adam_rows` below to the rows they name.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnegseq.api_export import register


def _row_slices(gradient) -> tuple[Any, Any] | None:
    """`(indices, values)` of a row-sparse gradient, None for a dense one."""
    if keras.backend.backend() != "tensorflow":
        return None  # JAX / torch gradients of a gather are dense arrays
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        return gradient.indices, gradient.values
    return None


def _gather(variable, indices):
    """`variable[indices]` read as a resource gather (TensorFlow). `ops.take` would read
    the whole variable first, and outside XLA TensorFlow then copies that whole buffer
    when the variable is scattered into while the read is alive."""
    import tensorflow as tf

    if isinstance(variable, keras.Variable):
        variable = variable.value  # the tf.Variable
    return tf.gather(variable, indices)


def _scatter(optimizer, variable, indices, rows) -> None:
    """`variable[indices] = rows` (a TensorFlow resource scatter-update)."""
    import tensorflow as tf

    optimizer.assign(variable, tf.IndexedSlices(rows, indices))


def lazy_adam_step_size(learning_rate, beta_1, beta_2, step):
    """`alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)`: Keras' bias-corrected step size."""
    return learning_rate * ops.sqrt(1 - ops.power(beta_2, step)) / (1 - ops.power(beta_1, step))


def lazy_adam_masked(w, m, v, indices, values, alpha, beta_1, beta_2, epsilon):
    """Lazy Adam as one pass over a whole (small) table: the rows named in `indices`
    `[N]` get `lazy_adam_rows` with their summed gradient (`values` `[N, d]`), the
    others keep their weights and moments. Returns the new `(w, m, v)` `[V, d]`."""
    num_rows = w.shape[0]
    g = ops.segment_sum(values, indices, num_segments=num_rows)  # [V, d]
    ones = ops.ones(ops.shape(indices), values.dtype)
    used = ops.expand_dims(ops.segment_sum(ones, indices, num_segments=num_rows) > 0, 1)
    w_new, m_new, v_new = lazy_adam_rows(w, m, v, g, alpha, beta_1, beta_2, epsilon)
    return ops.where(used, w_new, w), ops.where(used, m_new, m), ops.where(used, v_new, v)


def lazy_adam_rows(w, m, v, g, alpha, beta_1, beta_2, epsilon):
    """One Adam step of some rows: the update rule of the module docstring.

    Args:
        w, m, v: tensors `[n, d]`. The rows' weights, first and second moments.
        g: tensor `[n, d]`. Each row's gradient, repeats already summed.
        alpha: scalar. `lr sqrt(1 - beta_2^t) / (1 - beta_1^t)` at this step.
        beta_1, beta_2, epsilon: floats or scalars, as Keras' `Adam`.

    Returns:
        `(w, m, v)` after the step, `[n, d]` each.
    """
    m = m + (g - m) * (1 - beta_1)
    v = v + (ops.square(g) - v) * (1 - beta_2)
    return w - alpha * m / (ops.sqrt(v) + epsilon), m, v


@register
class RowSparseAdam(keras.optimizers.Adam):
    """Adam that updates only the rows named by a row-sparse gradient (lazy Adam).

    Dense gradients get Keras' `Adam` update unchanged. See the module docstring for
    the update rule and which gradients are row-sparse.

    Args:
        learning_rate: float or schedule. Defaults to 0.001.
        beta_1: float. Defaults to 0.9.
        beta_2: float. Defaults to 0.999.
        epsilon: float. Defaults to 1e-7 (Keras' `Adam` default).
        name: str. Defaults to `"row_sparse_adam"`.
        **kwargs: Base optimizer arguments (`clipnorm`, `global_clipnorm`, ...).
            `amsgrad` and `weight_decay` are refused: both would touch every row.
            Under JAX the row-sparse training step also refuses gradient clipping,
            EMA, loss scaling and gradient accumulation (`tfnegseq/jax_sparse.py`).

    Example:

    ```python
    model = CtrModel(vocab_sizes, model_cfg, row_sparse_gradients=True)
    model.compile(optimizer=RowSparseAdam(1e-3))
    ```
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 name="row_sparse_adam", **kwargs):
        if kwargs.pop("amsgrad", False):
            raise ValueError("RowSparseAdam does not support `amsgrad=True`.")
        if kwargs.get("weight_decay"):
            raise ValueError(
                "RowSparseAdam does not support `weight_decay` (it would decay every row "
                f"every step). Received: weight_decay={kwargs['weight_decay']}"
            )
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=False, name=name, **kwargs)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # Per table (every 2-D variable): one int32 per row, scratch for numbering the
        # distinct rows of a batch (see `update_step`); 1/d of the table's memory.
        self._row_owners = [
            self.add_variable((var.shape[0],), initializer="zeros", dtype="int32",
                              name=f"row_owner_{var.name}")
            if len(var.shape) == 2 else None
            for var in var_list
        ]

    def update_step(self, gradient, variable, learning_rate):
        sparse = _row_slices(gradient)
        if sparse is None:
            return super().update_step(gradient, variable, learning_rate)
        indices, values = sparse
        dtype = variable.dtype
        values = ops.cast(values, dtype)
        lr = ops.cast(learning_rate, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        alpha = lazy_adam_step_size(lr, beta_1, beta_2, step)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        constants = (alpha, beta_1, beta_2, self.epsilon)

        num_rows, num_slices = variable.shape[0], indices.shape[0]
        if num_slices is None or num_rows <= num_slices or self._row_owners[index] is None:
            # A table no larger than the batch's slices: one masked pass over the table
            # costs no more than the gathers and scatters below. Same (lazy) result.
            w_new, m_new, v_new = lazy_adam_masked(variable, m, v, indices, values, *constants)
            self.assign(m, m_new)
            self.assign(v, v_new)
            self.assign(variable, w_new)
            return
        # Larger tables: gathers and scatters of the batch's N slices, so the cost does
        # not grow with the table. Repeated indices are summed without a sort: every
        # slice writes its position into the table's `row_owner` entry (one write wins
        # per row) and reads the winner back, which numbers the distinct rows by a
        # representative position in [0, N); a segment sum over those numbers gives
        # each slice its row's summed gradient. Each variable is then written once,
        # repeated indices writing identical rows (so the scatters are deterministic
        # and XLA updates the variables in place).
        owner = self._row_owners[index]
        positions = ops.arange(num_slices, dtype=owner.dtype)
        _scatter(self, owner, indices, positions)
        representative = _gather(owner, indices)  # [N] in [0, N)
        g = ops.take(ops.segment_sum(values, representative, num_segments=num_slices),
                     representative, axis=0)  # [N, d] summed gradient of each slice's row
        w_rows, m_rows, v_rows = lazy_adam_rows(_gather(variable, indices), _gather(m, indices),
                                                _gather(v, indices), g, *constants)
        _scatter(self, m, indices, m_rows)
        _scatter(self, v, indices, v_rows)
        _scatter(self, variable, indices, w_rows)

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        return config
