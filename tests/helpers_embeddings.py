"""Embedding-lookup test helpers shared by the model tests and the JAX backend test.

`check_take_rows_adam_step` is backend-agnostic: `tests/models/test_ctr.py` calls it, and
`tests/layers/test_jax_backend.py` runs it under JAX.
"""

from __future__ import annotations

import keras
import numpy as np


def check_take_rows_adam_step(seed=0):
    """One Adam step through `take_rows` with repeated ids equals numpy Adam on the
    summed (dense) gradient: the second moment sees `(sum g)^2`, on every backend."""
    from tfnegseq.embeddings import take_rows

    rng = np.random.default_rng(seed)
    vocab, dim, lr, eps = 6, 3, 0.1, 1e-7
    table0 = rng.normal(size=(vocab, dim)).astype("float32")
    ids = np.array([[0, 2, 2], [5, 2, 0]])  # row 2 three times, row 0 twice, 1/3/4 unused
    weight = rng.normal(size=(2, 3, dim)).astype("float32")
    # loss = sum(rows * weight): d loss / d table[r] = sum of weight over ids == r.
    grad = np.zeros((vocab, dim), "float32")
    np.add.at(grad, ids.reshape(-1), weight.reshape(-1, dim))
    m = 0.1 * grad  # Adam, step 1, beta_1 0.9, beta_2 0.999, from zero moments
    v = 0.001 * grad**2
    alpha = lr * np.sqrt(1 - 0.999) / (1 - 0.9)
    expected = table0 - alpha * m / (np.sqrt(v) + eps)

    variable = keras.Variable(table0)
    optimizer = keras.optimizers.Adam(lr, epsilon=eps)
    optimizer.build([variable])

    def loss_fn(value):
        return keras.ops.sum(take_rows(value, keras.ops.convert_to_tensor(ids)) * weight)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(variable.value)
        (g,) = tape.gradient(loss, [variable.value])
    else:
        import jax

        g = jax.grad(loss_fn)(variable.value)
    np.testing.assert_allclose(np.asarray(g), grad, rtol=1e-6, atol=1e-6)
    optimizer.apply([g], [variable])
    np.testing.assert_allclose(np.asarray(variable.value), expected, rtol=1e-5, atol=1e-6)
