"""DinAttention test helpers: numpy references, random inputs and `check_*` functions.

`din_reference` is the literal DIN activation unit in float64; `din_bf16_reference`
follows `DinAttention.call` op by op under `mixed_bfloat16`, rounding to bfloat16 after
each. The `check_*` functions are backend-agnostic: `tests/layers/test_attention.py`
calls them, and `tests/layers/test_jax_backend.py` runs them under JAX.
"""

from __future__ import annotations

import keras
import numpy as np

from tests.helpers import assert_bf16_close, bf16_matmul, eager_call, to_bf16, to_numpy
from tfnegseq.layers.attention import DinAttention

ACTIVATIONS = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0.0),
}


def din_reference(keys, query, mask, weights, activation):
    """Literal DIN: MLP([k, q, k - q, k * q]) -> score, no softmax, masked weighted sum."""
    k = keys.astype("float64")
    q = np.broadcast_to(query[:, None, :], k.shape)
    x = np.concatenate([k, q, k - q, k * q], axis=-1)  # [B, L, 4d]
    *hidden, (w_out, b_out) = weights
    for w, b in hidden:
        x = ACTIVATIONS[activation](x @ w + b)
    scores = (x @ w_out + b_out)[..., 0] * mask  # [B, L]
    return np.einsum("bl,bld->bd", scores, k), scores


def random_inputs(rng, batch=4, length=6, dim=8):
    keys = rng.normal(size=(batch, length, dim)).astype("float32")
    query = rng.normal(size=(batch, dim)).astype("float32")
    mask = np.ones((batch, length), bool)
    for b in range(batch):
        mask[b, : min(b, length - 1)] = False  # left padding, row 0 unpadded
    return keys, query, mask


def set_random_weights(layer, rng):
    """Random weights for every Dense of a built `DinAttention`; returns them per sublayer."""
    weights = []
    for sublayer in [*layer.hidden_layers, layer.score]:
        values = [(rng.normal(size=w.shape) * 0.5).astype("float32") for w in sublayer.weights]
        sublayer.set_weights(values)
        weights.append(values)
    return weights


def check_din(seed=0, units=(6, 5), activation="sigmoid", call=eager_call, dtype=None, atol=1e-5):
    rng = np.random.default_rng(seed)
    keys, query, mask = random_inputs(rng)
    layer = DinAttention(units=units, activation=activation, dtype=dtype)
    layer(keys, query, mask)
    weights = set_random_weights(layer, rng)
    pooled, scores = to_numpy(call(layer, keys, query, mask, return_attention_scores=True))
    want_pooled, want_scores = din_reference(keys, query, mask, weights, activation)
    np.testing.assert_allclose(scores.astype("float32"), want_scores, atol=atol, rtol=atol)
    np.testing.assert_allclose(pooled.astype("float32"), want_pooled, atol=atol, rtol=atol)
    return pooled, scores


# --------------------------------------------------------------------------------------
# mixed_bfloat16.


def _bf16_activation(activation, x):
    """The activation of bf16 values computed in float32 and rounded once, as XLA does;
    TensorFlow eager and JAX round differently (their sigmoid is up to 2 bf16 ulps off)."""
    return to_bf16(ACTIVATIONS[activation](x.astype("float64")).astype("float32"))


def din_bf16_reference(keys, query, mask, weights, activation):
    """`DinAttention.call` under mixed_bfloat16, rounding to bf16 after every op: bf16
    inputs and weights; the first layer as `k @ (W_k + W_diff + diag(q) W_prod) +
    (q @ (W_q - W_diff) + b)`; bf16 matmuls (float32 accumulation, one rounding); the
    masked weighted sum as a bf16 matmul.

    Returns pooled `[B, d]`, scores `[B, L]` and, for each, the magnitude its error is
    measured against: a dot product's rounding (and a 1-ulp change of an activation)
    moves it by ulps of `sum |a_i b_i|`, not of the (possibly cancelled) sum. So the
    scores' scale is `|h| @ |w_out| + |b_out|` (`h` the last hidden activation) and
    the pooled scale is that scale summed against `|k|`."""
    k, q = to_bf16(keys), to_bf16(query)
    (w1, b1), *rest = [[to_bf16(w) for w in values] for values in weights]
    *hidden, (w_out, b_out) = rest
    d = k.shape[-1]
    w_k, w_q, w_diff, w_prod = (w1[i * d : (i + 1) * d] for i in range(4))
    per_example_kernel = to_bf16(
        to_bf16(w_k + w_diff)[None] + to_bf16(q[:, :, None] * w_prod[None])
    )  # [B, d, u]
    per_example_bias = to_bf16(bf16_matmul(q, to_bf16(w_q - w_diff)) + b1)  # [B, u]
    h = to_bf16(bf16_matmul(k, per_example_kernel) + per_example_bias[:, None])
    h = _bf16_activation(activation, h)  # [B, L, u]
    for w, b in hidden:
        h = _bf16_activation(activation, to_bf16(bf16_matmul(h, w) + b))
    scores = to_bf16(bf16_matmul(h, w_out) + b_out)[..., 0]  # [B, L]
    scores = np.where(mask, scores, np.float32(0))
    pooled = bf16_matmul(scores[:, None, :], k)[:, 0]  # [B, d]
    scores_scale = np.where(mask, (np.abs(h) @ np.abs(w_out) + np.abs(b_out))[..., 0], 0)
    pooled_scale = np.einsum("bl,bld->bd", scores_scale, np.abs(k))
    return pooled, scores, pooled_scale.astype("float32"), scores_scale.astype("float32")


def check_din_bf16(seed=0, units=(6, 5), activation="sigmoid", call=eager_call, ulps=3):
    """DinAttention under mixed_bfloat16 against `din_bf16_reference`, within `ulps` bf16
    ulps of the scales it returns. Measured on 30 seeds x 3 unit/activation settings:
    0 ulps under TensorFlow XLA (bit-exact), at most 2 under TensorFlow eager and JAX
    (their bf16 sigmoid differs from float32-then-round), 0 for ReLU everywhere."""
    rng = np.random.default_rng(seed)
    keys, query, mask = random_inputs(rng)
    layer = DinAttention(units=units, activation=activation, dtype="mixed_bfloat16")
    layer(keys, query, mask)
    weights = set_random_weights(layer, rng)
    pooled, scores = call(layer, keys, query, mask, return_attention_scores=True)
    assert keras.backend.standardize_dtype(pooled.dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in layer.weights)
    want_pooled, want_scores, pooled_scale, scores_scale = din_bf16_reference(
        keys, query, mask, weights, activation
    )
    pooled, scores = to_numpy((pooled, scores))  # bfloat16 arrays
    assert_bf16_close(scores.astype("float32"), want_scores, ulps=ulps, scale=scores_scale)
    assert_bf16_close(pooled.astype("float32"), want_pooled, ulps=ulps, scale=pooled_scale)
    return pooled, scores
