"""Polarity-layer test helpers: numpy references, random inputs and `check_*` functions.

`*_reference` functions transcribe the paper (§3.3 mixed sequence, eq. 2 PBE, eq. 3-5
TAPF); `*_bf16_reference` ones round to bfloat16 after every op the layers compute in
bfloat16 under `mixed_bfloat16`. The `check_*` functions are backend-agnostic: the
polarity tests call them, and `tests/layers/test_jax_backend.py` runs them under JAX.
"""

from __future__ import annotations

import fractions
import math

import keras
import numpy as np

from tests.helpers import assert_bf16_close, bf16_matmul, eager_call, to_bf16, to_numpy
from tfnegseq.layers.polarity import (
    MixedPolaritySequence,
    PolarityBiasEmbedding,
    TargetAwarePolarityFusion,
)

# --------------------------------------------------------------------------------------
# Mixed-polarity sequence (§3.3).


# TAPF's switches at their defaults (the layer's constructor), for the references.
TAPF_SWITCHES = {
    "use_polarity_embedding": True,
    "use_gating": True,
    "use_polarity_sign": True,
    "use_residual": True,
    "use_target_interaction": True,
    "use_bias": True,
}


def exact_floor(ratio, length):
    return math.floor(fractions.Fraction(str(ratio)) * length)


def mixed_sequence_reference(pos_item, pos_order, neg_item, neg_order, length, ratio, mode):
    """Builds every row with plain Python lists and sorted() (§3.3, steps 1-2)."""
    num_pos, num_neg = (
        exact_floor(ratio, length),
        exact_floor(1 - fractions.Fraction(str(ratio)), length),
    )
    batch = pos_item.shape[0]
    items = np.zeros((batch, length), pos_item.dtype)
    polarity = np.zeros((batch, length), np.int32)
    for b in range(batch):
        pos = [(int(o), int(i)) for i, o in zip(pos_item[b], pos_order[b], strict=True) if i != 0]
        neg = [(int(o), int(i)) for i, o in zip(neg_item[b], neg_order[b], strict=True) if i != 0]
        pos = sorted(pos)[len(pos) - min(num_pos, len(pos)) :]
        neg = sorted(neg)[len(neg) - min(num_neg, len(neg)) :]
        if mode == "interleaved":  # by order; on a tie the positive comes first
            tokens = sorted([(o, 0, i, 1) for o, i in pos] + [(o, 1, i, -1) for o, i in neg])
        else:
            tokens = [(o, 0, i, 1) for o, i in pos] + [(o, 1, i, -1) for o, i in neg]
        for k, (_, _, item, sign) in enumerate(tokens):
            items[b, length - len(tokens) + k] = item
            polarity[b, length - len(tokens) + k] = sign
    return items, polarity


def random_histories(rng, batch, max_history, max_order=30, dtype="int64", holes=0.0):
    """Left-padded positive and negative histories; orders drawn from one small pool,
    so ties between a positive and a negative happen. Row 0 is empty and row 1 full;
    in the other rows each real slot is emptied (item 0) with probability `holes`, so
    empty slots also sit between and after real ones. Empty slots get garbage orders."""

    def one_side():
        items = np.zeros((batch, max_history), dtype)
        orders = np.zeros((batch, max_history), dtype)
        for b in range(batch):
            n = (0, max_history)[b] if b < 2 else int(rng.integers(0, max_history + 1))
            items[b, max_history - n :] = rng.integers(1, 1000, n)
            orders[b, max_history - n :] = np.sort(rng.choice(np.arange(1, max_order), n, False))
        if holes:
            items[2:][rng.random(items[2:].shape) < holes] = 0
        orders = np.where(items == 0, rng.integers(-50, 2 * max_order, orders.shape), orders)
        return items, orders.astype(dtype)

    return (*one_side(), *one_side())


def check_mixed_sequence(mode, ratio, length, seed=0, call=eager_call, dtype=None, holes=0.2):
    rng = np.random.default_rng(seed)
    inputs = random_histories(rng, batch=16, max_history=7, holes=holes)
    layer = MixedPolaritySequence(length, ratio, mode=mode, dtype=dtype)
    items, polarity = to_numpy(call(layer, *inputs))
    want_items, want_polarity = mixed_sequence_reference(*inputs, length, ratio, mode)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_array_equal(polarity, want_polarity)
    # int64 ids stay int64 (JAX without x64 turns every int64 input into int32).
    assert polarity.dtype == np.int32
    assert items.dtype == to_numpy(keras.ops.convert_to_tensor(inputs[0])).dtype


# --------------------------------------------------------------------------------------
# Polarity Bias Embedding (eq. 2).


def pbe_reference(tokens, polarity, table):
    """eq. 2 without pos_k: h = e + b_p for real tokens; padding unchanged."""
    return np.where((polarity != 0)[..., None], tokens + table[polarity + 1], tokens)


def random_tokens(rng, batch=4, length=6, dim=8):
    tokens = rng.normal(size=(batch, length, dim)).astype("float32")
    target = rng.normal(size=(batch, dim)).astype("float32")
    polarity = rng.choice(np.array([-1, 1], np.int32), size=(batch, length))
    for b in range(batch):  # left padding of b slots (row 0 unpadded)
        polarity[b, : min(b, length - 1)] = 0
    return tokens, target, polarity


def check_pbe(seed=0, call=eager_call, dtype=None, atol=1e-6):
    rng = np.random.default_rng(seed)
    tokens, _, polarity = random_tokens(rng)
    layer = PolarityBiasEmbedding(dtype=dtype)
    layer(tokens, polarity)
    table = rng.normal(size=(3, tokens.shape[-1])).astype("float32")
    layer.embeddings.set_weights([table])
    out = to_numpy(call(layer, tokens, polarity)).astype("float32")
    np.testing.assert_allclose(out, pbe_reference(tokens, polarity, table), atol=atol, rtol=atol)
    return out


# --------------------------------------------------------------------------------------
# Target-Aware Polarity Fusion (eq. 3-5), one case per row of Table 3.

TAPF_ROWS = {
    "full": {},
    "no_polarity_embedding": {"use_polarity_embedding": False},
    "no_gating": {"use_gating": False},
    "no_polarity_sign": {"use_polarity_sign": False},
    "no_residual": {"use_residual": False},
    "no_target_interaction": {"use_target_interaction": False},
    "no_target_interaction_no_gating": {"use_target_interaction": False, "use_gating": False},
}


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def tapf_reference(tokens, target, polarity, weights, switches):
    """eq. 3-5 written literally (with the concat of eq. 4); padding tokens unchanged.

    `weights` maps sublayer names to their weights (`[kernel]` or `[kernel, bias]`);
    `weights["polarity_embedding"]` is the layer's own table or the shared one."""
    use = {**TAPF_SWITCHES, **switches}
    h = tokens.astype("float64")
    x = h * target[:, None, :] if use["use_target_interaction"] else h
    w_int, b_int = (*weights["interaction"], 0.0)[:2]
    e = relu(x @ w_int + b_int)  # eq. 3 (+ bias unless use_bias=False)
    if use["use_gating"]:
        parts = [h, e]
        if use["use_polarity_embedding"]:
            parts.append(weights["polarity_embedding"][0][polarity + 1])
        w_g, b_g = (*weights["gate"], 0.0)[:2]
        scale = 2.0 * sigmoid(np.concatenate(parts, axis=-1) @ w_g + b_g) - 1.0  # eq. 4
    else:
        scale = 1.0
    sign = polarity if use["use_polarity_sign"] else np.ones_like(polarity)
    update = sign[..., None] * scale * e
    out = h + update if use["use_residual"] else update  # eq. 5
    return np.where((polarity == 0)[..., None], h, out)


def set_random_weights(layer, rng, scale=0.5):
    """Random weights for every named sublayer; returns {sublayer name: weights}."""
    weights = {}
    for name in ("interaction", "gate", "polarity_embedding"):
        sublayer = getattr(layer, name, None)
        if sublayer is None:
            continue
        values = [(rng.normal(size=w.shape) * scale).astype("float32") for w in sublayer.weights]
        sublayer.set_weights(values)
        weights[name] = values
    return weights


def tapf_case(
    row,
    seed,
    polarity_dim=None,
    use_bias=True,
    shared_dim=None,
    dtype=None,
    weight_scale=0.5,
    **shape,
):
    """A built TAPF layer with random weights, its inputs, call kwargs and weights.

    `shared_dim` set: `shared_polarity_embedding=True` and a random `[3, shared_dim]`
    table passed as `polarity_embeddings` (also `weights["polarity_embedding"]`).
    `weight_scale`: standard deviation of the random weights; small values give
    updates small beside the tokens, as at the start of training."""
    rng = np.random.default_rng(seed)
    tokens, target, polarity = random_tokens(rng, **shape)
    switches = dict(TAPF_ROWS[row])
    if not use_bias:
        switches["use_bias"] = False
    kwargs = {}
    if shared_dim is not None:
        switches["shared_polarity_embedding"] = True
        table = rng.normal(size=(3, shared_dim)) * weight_scale
        kwargs["polarity_embeddings"] = table.astype("float32")
    layer = TargetAwarePolarityFusion(polarity_dim=polarity_dim, dtype=dtype, **switches)
    layer(tokens, target, polarity, **kwargs)
    weights = set_random_weights(layer, rng, scale=weight_scale)
    if shared_dim is not None:
        weights["polarity_embedding"] = [kwargs["polarity_embeddings"]]
    return layer, (tokens, target, polarity), kwargs, weights, switches


def check_tapf(
    row,
    seed=0,
    call=eager_call,
    dtype=None,
    atol=1e-5,
    polarity_dim=None,
    use_bias=True,
    shared_dim=None,
):
    layer, inputs, kwargs, weights, switches = tapf_case(
        row,
        seed,
        polarity_dim=polarity_dim,
        use_bias=use_bias,
        shared_dim=shared_dim,
        dtype=dtype,
    )
    out = to_numpy(call(layer, *inputs, **kwargs)).astype("float32")
    want = tapf_reference(*inputs, weights, switches)
    np.testing.assert_allclose(out, want, atol=atol, rtol=atol)
    return out


# --------------------------------------------------------------------------------------
# mixed_bfloat16: references that round to bfloat16 after every op the layers compute in
# bfloat16 (tests.helpers.to_bf16), compared within 2 bf16 ulps.


def pbe_bf16_reference(tokens, polarity, table):
    """eq. 2 in bfloat16: h and b rounded to bf16, the sum rounded."""
    h = to_bf16(tokens)
    bias = to_bf16(table)[polarity + 1]
    return np.where((polarity != 0)[..., None], to_bf16(h + bias), h)


def tapf_bf16_reference(tokens, target, polarity, weights, switches):
    """eq. 3-5 as the layer computes them under mixed_bfloat16, rounding to bf16 after
    every op: bf16 inputs and weights, bf16 matmuls (float32 accumulation, biases and
    the polarity table folded into the kernels as extra rows), `2 sigmoid(z) - 1` as
    `tanh(z / 2)`. Returns the output and, per element, the magnitude its rounding
    error is measured against (`max(|h|, |update|)`: `h + update` can cancel)."""
    use = {**TAPF_SWITCHES, **switches}
    h, v = to_bf16(tokens), to_bf16(target)
    x = to_bf16(h * v[:, None, :]) if use["use_target_interaction"] else h
    w_int = to_bf16(weights["interaction"][0])
    if use["use_bias"]:  # [x, 1] @ [W_int; b_int]
        x = np.concatenate([x, np.ones_like(x[..., :1])], axis=-1)
        w_int = np.concatenate([w_int, to_bf16(weights["interaction"][1])[None]], axis=0)
    e = relu(bf16_matmul(x, w_int))  # eq. 3
    update = e
    if use["use_gating"]:  # eq. 4
        d = h.shape[-1]
        w_g = to_bf16(weights["gate"][0])
        w_h, w_e, w_p = w_g[:d], w_g[d : 2 * d], w_g[2 * d :]
        bias = to_bf16(weights["gate"][1])[None] if use["use_bias"] else None
        if use["use_polarity_embedding"]:  # [h, 1, [p = +1]] @ [W_h; t_-1; t_+1 - t_-1]
            t = bf16_matmul(to_bf16(weights["polarity_embedding"][0]), w_p)  # [3, d]
            if bias is not None:
                t = to_bf16(t + bias)
            positive = (polarity > 0)[..., None].astype("float32")
            x = np.concatenate([h, np.ones_like(positive), positive], axis=-1)
            kernel = np.concatenate([w_h, t[0:1], to_bf16(t[2:3] - t[0:1])], axis=0)
        elif bias is not None:
            x = np.concatenate([h, np.ones_like(h[..., :1])], axis=-1)
            kernel = np.concatenate([w_h, bias], axis=0)
        else:
            x, kernel = h, w_h
        logits = to_bf16(bf16_matmul(x, kernel) + bf16_matmul(e, w_e))
        scale = to_bf16(np.tanh(to_bf16(0.5 * logits)))  # 2 sigmoid(z) - 1
        update = to_bf16(scale * e)
    real = (polarity != 0)[..., None]
    sign = polarity[..., None] if use["use_polarity_sign"] else real
    update = update * sign.astype("float32")  # exact: +1, -1, 0
    if use["use_residual"]:  # eq. 5
        return to_bf16(h + update), np.maximum(np.abs(h), np.abs(update))
    out = np.where(real, update, h)
    return out, np.abs(out)


def check_pbe_bf16(seed=0, call=eager_call, ulps=2):
    rng = np.random.default_rng(seed)
    tokens, _, polarity = random_tokens(rng)
    layer = PolarityBiasEmbedding(dtype="mixed_bfloat16")
    layer(tokens, polarity)
    table = rng.normal(size=(3, tokens.shape[-1])).astype("float32")
    layer.embeddings.set_weights([table])
    out = call(layer, tokens, polarity)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    want = pbe_bf16_reference(tokens, polarity, table)
    # h + b can cancel: errors are measured against max(|h|, |b|, |h + b|).
    scale = np.maximum(np.abs(to_bf16(tokens)), np.abs(to_bf16(table)[polarity + 1]))
    assert_bf16_close(to_numpy(out).astype("float32"), want, ulps=ulps, scale=scale)


def check_tapf_bf16(
    row, seed=0, call=eager_call, ulps=2, use_bias=True, shared_dim=None, weight_scale=0.5, **shape
):
    layer, inputs, kwargs, weights, switches = tapf_case(
        row,
        seed,
        use_bias=use_bias,
        shared_dim=shared_dim,
        dtype="mixed_bfloat16",
        weight_scale=weight_scale,
        **shape,
    )
    out = call(layer, *inputs, **kwargs)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in layer.weights)
    want, scale = tapf_bf16_reference(*inputs, weights, switches)
    assert_bf16_close(to_numpy(out).astype("float32"), want, ulps=ulps, scale=scale)
