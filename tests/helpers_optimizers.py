"""Shared helpers of the optimizer tests (also run under JAX by test_jax_backend)."""

import keras
import numpy as np

from tfnegseq.optimizers import RowSparseAdam

LR, B1, B2, EPS = 0.05, 0.9, 0.999, 1e-7



def numpy_dense_adam(w, grads):
    """Plain Adam over every row for a list of dense gradients."""
    w = w.astype(np.float64).copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g**2
        w -= LR * np.sqrt(1 - B2**t) / (1 - B1**t) * m / (np.sqrt(v) + EPS)
    return w


def check_dense_gradients_get_plain_adam(seed=2):
    """Dense gradients: three steps equal numpy Adam (any backend; under JAX every
    gradient is dense, so this is all RowSparseAdam does there)."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(4, 3)).astype("float32")
    grads = [rng.normal(size=(4, 3)).astype("float32") for _ in range(3)]
    variable = keras.Variable(w0)
    optimizer = RowSparseAdam(LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    np.testing.assert_allclose(np.asarray(variable.value), numpy_dense_adam(w0, grads),
                               rtol=1e-5, atol=1e-6)
