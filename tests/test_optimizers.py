"""RowSparseAdam: lazy Adam on row-sparse gradients, checked against numpy written from
the update rule; Keras' Adam on dense gradients; the CTR model's row-sparse lookups."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers_optimizers import (
    B1,
    B2,
    EPS,
    LR,
    check_dense_gradients_get_plain_adam,
    numpy_dense_adam,
)
from tfnegseq.kinds.ctr.config import CtrModelConfig as ModelConfig
from tfnegseq.models.ctr import CtrModel
from tfnegseq.optimizers import RowSparseAdam


class NumpyLazyAdam:
    """Lazy Adam from its definition: only the rows named in a step change."""

    def __init__(self, table):
        self.w = table.astype(np.float64).copy()
        self.m = np.zeros_like(self.w)
        self.v = np.zeros_like(self.w)
        self.t = 0

    def step(self, ids, row_grads):
        self.t += 1
        g = np.zeros_like(self.w)
        np.add.at(g, ids, row_grads)  # repeats summed
        used = np.unique(ids)
        alpha = LR * np.sqrt(1 - B2**self.t) / (1 - B1**self.t)
        self.m[used] = B1 * self.m[used] + (1 - B1) * g[used]
        self.v[used] = B2 * self.v[used] + (1 - B2) * g[used] ** 2
        self.w[used] -= alpha * self.m[used] / (np.sqrt(self.v[used]) + EPS)


@pytest.mark.parametrize("jit", [False, True], ids=["eager_graph", "xla"])
@pytest.mark.parametrize("vocab", [40, 6], ids=["scattered_rows", "masked_table"])
def test_row_sparse_gradients_get_lazy_adam(jit, vocab):
    """Three steps of `ops.take` gradients with repeats (IndexedSlices) against numpy
    lazy Adam: rows named in a step move by Adam on their summed gradient, other rows
    and their moments stay; both the scatter path (table larger than the slices) and
    the masked path (table no larger) are exercised."""
    rng = np.random.default_rng(1)
    dim = 3
    table0 = rng.normal(size=(vocab, dim)).astype("float32")
    steps = [
        np.array([1, 4, 4, 0, 1, 1, 5, 3], "int32") % vocab,
        np.array([2, 2, 2, 5, 1, 0, 0, 3], "int32") % vocab,
        np.array([4, 3, 3, 3, 3, 2, 1, 1], "int32") % vocab,
    ]
    weights = [rng.normal(size=(len(s), dim)).astype("float32") for s in steps]
    variable = keras.Variable(table0)
    optimizer = RowSparseAdam(LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    optimizer.build([variable])

    @tf.function(jit_compile=jit)
    def step(ids, weight):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(keras.ops.take(variable.value, ids, axis=0) * weight)
        grads = tape.gradient(loss, [variable.value])
        optimizer.apply(grads, [variable])
        return isinstance(grads[0], tf.IndexedSlices)

    reference = NumpyLazyAdam(table0)
    for ids, weight in zip(steps, weights, strict=True):
        assert step(tf.constant(ids), tf.constant(weight))  # the gradient was row-sparse
        reference.step(ids, weight)  # d loss / d row = weight
        np.testing.assert_allclose(variable.numpy(), reference.w, rtol=1e-5, atol=1e-6)
        m, v = optimizer._momentums[0], optimizer._velocities[0]
        np.testing.assert_allclose(m.numpy(), reference.m, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(v.numpy(), reference.v, rtol=1e-4, atol=1e-9)  # f32 1 - beta_2
    # Lazy, not dense: a row used in step 2 only (row 5 for vocab 40) kept its weight in
    # step 3, where dense Adam would have moved it by its momentum.
    if vocab == 40:
        dense = numpy_dense_adam(table0, [_dense(s, w, vocab) for s, w in zip(steps, weights,
                                                                              strict=True)])
        assert np.abs(dense[5] - reference.w[5]).max() > 1e-3


def _dense(ids, weight, vocab):
    g = np.zeros((vocab, weight.shape[1]))
    np.add.at(g, ids, weight)
    return g


def test_dense_gradients_get_plain_adam():
    check_dense_gradients_get_plain_adam(seed=2)


def test_options_that_touch_every_row_are_refused_and_config_round_trips():
    with pytest.raises(ValueError, match="amsgrad"):
        RowSparseAdam(amsgrad=True)
    with pytest.raises(ValueError, match="weight_decay"):
        RowSparseAdam(weight_decay=0.01)
    opt = RowSparseAdam(0.02, beta_1=0.8, epsilon=1e-6)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, RowSparseAdam)
    assert (again.beta_1, again.epsilon) == (0.8, 1e-6)
    assert float(again.learning_rate) == pytest.approx(0.02)


def _ctr_model(row_sparse, items):
    m = dataclasses.asdict(ModelConfig(polarity="tapf", sequence_length=6, embedding_dim=8,
                                       mlp_units=[8], attention_units=[8]))
    keras.utils.set_random_seed(3)
    return CtrModel({"item_id": items, "user_id": 5}, m, row_sparse_gradients=row_sparse)


def _ctr_batch(rng, n, items, lo=1, hi=None):
    hi = hi or items
    x = {"user_id": rng.integers(1, 5, n), "item_id": rng.integers(lo, hi, n)}
    for side, first in (("pos", 1), ("neg", 2)):  # interleaved: pos 1, 3, ..; neg 2, 4, ..
        x[f"{side}_item_id"] = rng.integers(lo, hi, (n, 6))
        x[f"{side}_order"] = np.tile(np.arange(first, 13, 2), (n, 1))
    return x, rng.integers(0, 2, n).astype("float32")


def test_ctr_model_row_sparse_training_step():
    """`CtrModel(row_sparse_gradients=True)` + RowSparseAdam, one compiled (XLA) step
    from the same weights equals the default model + Adam (from zero moments, lazy and
    dense Adam agree on every row); a second step on other items leaves the rows of the
    first step where they were, which dense Adam does not."""
    items = 300
    rng = np.random.default_rng(4)
    x1, y1 = _ctr_batch(rng, 16, items, 1, 100)  # items 1..99
    x2, y2 = _ctr_batch(rng, 16, items, 150, 300)  # items 150..299
    models = {}
    for sparse in (False, True):
        model = _ctr_model(sparse, items)
        model(x1)
        model.compile(optimizer=RowSparseAdam(1e-2) if sparse else keras.optimizers.Adam(1e-2), jit_compile=True)
        models[sparse] = model
    models[True].set_weights(models[False].get_weights())
    table0 = models[False].item_embedding.embeddings.numpy()
    for model in models.values():
        model.train_on_batch(x1, y1)
    for a, b in zip(models[False].get_weights(), models[True].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    table1 = models[True].item_embedding.embeddings.numpy()
    used1 = np.unique(np.concatenate([x1["item_id"], x1["pos_item_id"].ravel(),
                                      x1["neg_item_id"].ravel()]))
    assert np.abs(table1[used1] - table0[used1]).max() > 1e-3
    unused = np.setdiff1d(np.arange(items), used1)
    np.testing.assert_array_equal(table1[unused], table0[unused])

    for model in models.values():
        model.train_on_batch(x2, y2)
    sparse2 = models[True].item_embedding.embeddings.numpy()
    dense2 = models[False].item_embedding.embeddings.numpy()
    rows = used1[used1 > 0]  # row 0 (padding) gets no gradient
    np.testing.assert_array_equal(sparse2[rows], table1[rows])  # lazy: not moved in step 2
    assert np.abs(dense2[rows] - table1[rows]).max() > 1e-4  # dense: moved by momentum
