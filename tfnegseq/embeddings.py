"""Embedding tables for any model: float32 reads, one dense gradient, row-sparse updates.

`EmbeddingTables` is a component a model owns (composition: `self.tables =
EmbeddingTables(row_sparse_gradients=...)`) and reads every embedding table through:

- Tables are float32 under every dtype policy and are read outside the model's autocast
  scope, so `mixed_bfloat16` never casts a whole table to bf16 each step nor sums its
  gradient rows in bf16 (the "embedding trap"); rows are cast to the compute dtype
  after the lookup.
- The default lookup is `take_rows`: its gradient for the table is one dense segment
  sum, so rows used several times in a batch are summed before the optimizer sees them,
  on every backend (Adam's second moment sees `(sum g)^2`, as under JAX).
- `row_sparse_gradients=True`: a plain `ops.take`, whose TensorFlow gradient is
  `tf.IndexedSlices`, for `tfnegseq.optimizers.RowSparseAdam` to update only the rows a
  batch used; under JAX the model's `train_step` should return
  `tables.train_step(model, state, data)` (`tfnegseq.jax_sparse`), which captures the
  looked-up slices through `capture` and applies the same lazy Adam.

A model must read its tables only through `lookup` / `gather` / `read`: under the JAX
row-sparse step a direct read gets no gradient.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnegseq.api_export import register
from tfnegseq.keras_internals import AutocastScope


@register
class ZeroLeadingRows(keras.initializers.Initializer):
    """`initializer`'s values with the first `rows` rows set to 0.

    For the rows of a vocabulary table that no kept id maps to: padding (row 0) and the
    out-of-vocabulary buckets (rows 1 .. oov_buckets, `tfnegseq.data.vocab`). The
    vocabularies are counted on the training split, so with `min_count` 1 no training
    example maps to an OOV bucket: its row never gets a gradient and, drawn at random,
    would stay a random vector that every unseen user or item of the test split reads.
    Zero, it reads as "unknown" (no contribution), and it still trains from zero where
    training ids do map to it (`min_count` > 1). The whole table is drawn first, so the
    other rows get exactly the values `initializer` alone gives them.

    Args:
        initializer: str or initializer. The values of the other rows.
        rows: int. How many leading rows are zero (`1 + oov_buckets`).
    """

    def __init__(self, initializer: Any = "random_normal", rows: int = 1):
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"`rows` must be an int >= 0. Received: rows={rows!r}")
        self.initializer = keras.initializers.get(initializer)
        self.rows = rows

    def __call__(self, shape: Any, dtype: Any = None) -> Any:
        values = self.initializer(shape, dtype=dtype)
        keep = ops.cast(ops.arange(shape[0]) >= self.rows, values.dtype)
        return values * ops.reshape(keep, (shape[0],) + (1,) * (len(shape) - 1))

    def get_config(self) -> dict[str, Any]:
        return {"initializer": keras.initializers.serialize(self.initializer),
                "rows": self.rows}


def take_rows(table: Any, ids: Any) -> Any:
    """`ops.take(table, ids, axis=0)` whose gradient is one dense segment sum.

    The gradient for `table` `[V, d]` is `segment_sum(upstream, ids, V)`: the rows of
    ids that repeat are added before the optimizer sees them, on every backend. (The
    TensorFlow gradient of a gather is `IndexedSlices`; Keras' Adam squares those row
    by row, so a row used `n` times in a batch would get `sum g^2` instead of
    `(sum g)^2` in its second moment, unlike under JAX, and the rows would be summed
    twice, once per moment.)
    """

    @ops.custom_gradient
    def _take(values):
        rows = ops.take(values, ids, axis=0)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            dim = ops.shape(values)[-1]
            return ops.segment_sum(
                ops.reshape(upstream, (-1, dim)),
                ops.reshape(ids, (-1,)),
                num_segments=values.shape[0],
            )

        return rows, grad

    # Pass a tensor, not the variable: TensorFlow's custom gradient refuses a variable
    # read inside the function. `ops.copy` is that read (compiled code elides the copy).
    return _take(ops.copy(table))


class EmbeddingTables:
    """Reads a model's embedding tables (see the module docstring).

    Args:
        row_sparse_gradients: bool. Plain gathers (row-sparse gradients under
            TensorFlow; the captured-slice step under JAX) instead of `take_rows`.
            Defaults to False.

    Attributes:
        capture: the `tfnegseq.jax_sparse.SliceCapture` of the JAX row-sparse step
            while it traces the forward pass, else None.

    Example:

    ```python
    class MyModel(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.tables = EmbeddingTables()
            self.items = keras.layers.Embedding(1000, 16, dtype="float32")

        def call(self, ids):
            return self.tables.lookup(self, self.items, ids, self.compute_dtype)
    ```
    """

    def __init__(self, row_sparse_gradients: bool = False):
        self.row_sparse_gradients = bool(row_sparse_gradients)
        self.capture: Any = None

    @staticmethod
    def table(layer: keras.layers.Embedding) -> Any:
        """An `Embedding` sublayer's float32 table variable (built on first use)."""
        if not layer.built:
            layer.build()
        return layer.embeddings

    @staticmethod
    def read(table: Any) -> Any:
        """The float32 value of a table variable, read outside any autocast scope."""
        with AutocastScope(None):
            return table.value  # TensorFlow: the tf.Variable; JAX: the (traced) array

    def gather(self, model: keras.Model, table: Any, ids: Any) -> Any:
        """Float32 rows `table[ids]` `[*ids.shape, d]` (`table`: a variable of `model`)."""
        if "int" not in keras.backend.standardize_dtype(ids.dtype):
            ids = ops.cast(ids, "int32")  # as `Embedding.call` (e.g. symbolic float inputs)
        if self.row_sparse_gradients:
            if self.capture is not None:  # JAX row-sparse train_step
                return self.capture.gather(model, self, table, ids)
            return ops.take(self.read(table), ids, axis=0)
        return take_rows(self.read(table), ids)

    def lookup(self, model: keras.Model, layer: keras.layers.Embedding, ids: Any,
               dtype: str | None = None) -> Any:
        """Rows of an `Embedding` sublayer, cast to `dtype` (the compute dtype)."""
        rows = self.gather(model, self.table(layer), ids)
        return ops.cast(rows, dtype) if dtype else rows

    @staticmethod
    def table_index(model: keras.Model, table: Any) -> int:
        """The position of a table variable in `model.trainable_variables`."""
        for index, variable in enumerate(model.trainable_variables):
            if variable is table:
                return index
        raise ValueError(f"{table.path} is not a trainable variable of {model.name}")

    def uses_jax_step(self) -> bool:
        """True where `train_step` must be `self.train_step` (JAX, row-sparse)."""
        return self.row_sparse_gradients and keras.backend.backend() == "jax"

    def train_step(self, model: keras.Model, *args: Any) -> Any:
        """The JAX row-sparse step (`tfnegseq.jax_sparse.train_step`)."""
        from tfnegseq import jax_sparse

        return jax_sparse.train_step(model, self, *args)
