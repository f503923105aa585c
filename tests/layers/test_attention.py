"""Tests for tfnegseq.layers.attention.DinAttention (DIN activation unit + pooling).

The numpy references and the backend-agnostic `check_*` functions live in
`tests/helpers_attention.py` (`test_jax_backend.py` runs the same checks under JAX).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.helpers import (
    assert_config_round_trip,
    assert_save_load_equal,
    eager_call,
    to_numpy,
    xla_call,
)
from tests.helpers_attention import (
    check_din,
    check_din_bf16,
    din_reference,
    random_inputs,
    set_random_weights,
)
from tfnegseq.layers.attention import DinAttention, token_matmul


@pytest.mark.parametrize(
    "units, activation", [((6, 5), "sigmoid"), ((7,), "relu"), ((4, 4, 3), "sigmoid")]
)
def test_din_matches_reference(units, activation):
    check_din(seed=len(units), units=units, activation=activation)


def test_din_sublayer_names_and_shapes():
    layer = DinAttention(units=(6, 5))
    layer(*random_inputs(np.random.default_rng(0)))
    assert [s.name for s in layer.hidden_layers] == ["hidden_0", "hidden_1"]
    assert tuple(layer.hidden_layers[0].kernel.shape) == (4 * 8, 6)
    assert tuple(layer.score.kernel.shape) == (5, 1)


def test_din_without_mask_and_plain_output():
    keys, query, _ = random_inputs(np.random.default_rng(1))
    layer = DinAttention(units=(4,))
    full = to_numpy(layer(keys, query, np.ones(keys.shape[:2], bool)))
    np.testing.assert_allclose(to_numpy(layer(keys, query)), full, atol=1e-6)
    assert full.shape == (4, 8)


def test_din_padding_changes_nothing():
    rng = np.random.default_rng(2)
    keys, query, mask = random_inputs(rng)
    layer = DinAttention(units=(6, 5))
    pooled, scores = to_numpy(layer(keys, query, mask, return_attention_scores=True))
    assert (scores[~mask] == 0).all()
    garbage = np.where(mask[..., None], keys, rng.normal(size=keys.shape) * 9).astype("float32")
    extra = np.concatenate([rng.normal(size=(4, 3, 8)).astype("float32"), garbage], axis=1)
    extra_mask = np.concatenate([np.zeros((4, 3), bool), mask], axis=1)
    pooled2, scores2 = to_numpy(layer(extra, query, extra_mask, return_attention_scores=True))
    np.testing.assert_allclose(pooled2, pooled, atol=1e-5)
    np.testing.assert_allclose(scores2[:, 3:], scores, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"units": ()}, "`units` must be a non-empty sequence of positive integers"),
        ({"units": (8, 0)}, r"Received: units=\(8, 0\)"),
        ({"units": 8}, "`units` must be a non-empty sequence"),
        ({"activation": "dice"}, "`activation` must be a Keras activation name"),
    ],
)
def test_din_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DinAttention(**kwargs)


def test_din_query_dimension_validation():
    keys, query, mask = random_inputs(np.random.default_rng(0))
    with pytest.raises(ValueError, match="`query` must have the key dimension"):
        DinAttention()(keys, query[:, :3], mask)


def test_din_serialization(tmp_path):
    layer = DinAttention(units=[6, 5], activation="relu", bias_initializer="ones", name="din")
    assert_config_round_trip(layer)
    assert layer.get_config()["units"] == [6, 5]
    inputs = list(random_inputs(np.random.default_rng(3)))
    assert_save_load_equal(layer, inputs, tmp_path, ["float32", "float32", "bool"])


def test_din_xla():
    want = check_din(seed=4)
    got = check_din(seed=4, call=xla_call)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_din_mixed_bfloat16():
    """Against a reference that rounds to bf16 after every op, within 3 bf16 ulps (of
    the sum of |terms|: see `din_bf16_reference`); not float32 within 10 %."""
    pooled, _ = check_din_bf16(seed=5)
    assert keras.backend.standardize_dtype(pooled.dtype) == "bfloat16"


# --------------------------------------------------------------------------------------
# token_matmul (chunked matmul for per-token activations) and DIN at a chunked size.


@pytest.mark.parametrize("shape", [(256, 64, 8), (3, 5, 8), (100, 7, 8)])
def test_token_matmul_matches_matmul(shape):
    rng = np.random.default_rng(12)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(shape[-1], 5)).astype("float32")
    out = to_numpy(
        token_matmul(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(kernel))
    )
    assert out.shape == (*shape[:-1], 5)
    np.testing.assert_allclose(out, x.astype("float64") @ kernel, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="uses tf.GradientTape")
def test_token_matmul_gradients_match_matmul():
    import tensorflow as tf

    rng = np.random.default_rng(13)
    x = tf.constant(rng.normal(size=(256, 64, 8)).astype("float32"))  # chunked: 256 x 64 rows
    kernel = tf.Variable(rng.normal(size=(8, 5)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(256, 64, 5)).astype("float32"))

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn(x, kernel) * upstream)
        return [g.numpy() for g in tape.gradient(loss, [x, kernel])]

    for fn in (token_matmul, tf.function(token_matmul, jit_compile=True)):
        for got, want in zip(grads(fn), grads(keras.ops.matmul), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("call", [eager_call, xla_call])
def test_din_matches_reference_at_chunked_size(call):
    """256 x 64 keys: the second hidden layer takes token_matmul's chunked path."""
    rng = np.random.default_rng(14)
    keys, query, mask = random_inputs(rng, batch=256, length=64, dim=8)
    mask[:, :5] = False
    layer = DinAttention(units=(6, 5))
    layer(keys, query, mask)
    weights = set_random_weights(layer, rng)
    pooled, scores = to_numpy(call(layer, keys, query, mask, return_attention_scores=True))
    want_pooled, want_scores = din_reference(keys, query, mask, weights, "sigmoid")
    np.testing.assert_allclose(scores, want_scores, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pooled, want_pooled, atol=1e-4, rtol=1e-5)
