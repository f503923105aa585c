"""TransformerEncoder test helpers: numpy references, random inputs and `check_*` functions.

`transformer_reference` is the pre-LN encoder in float64; `transformer_bf16_reference`
follows the layer (its Keras sublayers included) op by op under `mixed_bfloat16`,
rounding to bfloat16 after each. The `check_*` functions are backend-agnostic:
`tests/layers/test_transformer.py` calls them, and `tests/layers/test_jax_backend.py`
runs them under JAX.
"""

from __future__ import annotations

import keras
import numpy as np

from tests.helpers import assert_bf16_close, bf16_matmul, eager_call, to_bf16, to_numpy
from tfnegseq.layers.transformer import TransformerEncoder


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def transformer_reference(tokens, target, mask, weights, num_heads, eps=1e-6):
    """Pre-LN encoder over all L + 1 tokens (no last-block shortcut); returns the
    target's output [B, d] and the last block's target attention [B, heads, L + 1]."""
    x = np.concatenate([tokens, target[:, None, :]], axis=1).astype("float64")  # [B, L+1, d]
    key_mask = np.concatenate([mask, np.ones((mask.shape[0], 1), bool)], axis=1)
    probs = None
    for block in weights["blocks"]:
        y = layer_norm(x, *block["attention_norm"], eps)
        wq, bq, wk, bk, wv, bv, wo, bo = block["attention"]  # kernels [d, heads, dk]
        q = np.einsum("bld,dhk->bhlk", y, wq) + bq[None, :, None, :]
        k = np.einsum("bld,dhk->bhlk", y, wk) + bk[None, :, None, :]
        v = np.einsum("bld,dhk->bhlk", y, wv) + bv[None, :, None, :]
        logits = np.einsum("bhqk,bhsk->bhqs", q, k) / np.sqrt(q.shape[-1])
        logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs = probs / probs.sum(-1, keepdims=True)  # [B, heads, L+1, L+1]
        context = np.einsum("bhqs,bhsk->bqhk", probs, v)
        x = x + np.einsum("bqhk,hkd->bqd", context, wo) + bo
        y = layer_norm(x, *block["ffn_norm"], eps)
        (w1, b1), (w2, b2) = block["ffn_inner"], block["ffn_outer"]
        x = x + np.maximum(y @ w1 + b1, 0.0) @ w2 + b2
    out = layer_norm(x[:, -1], *weights["final_norm"], eps)
    return out, probs[:, :, -1, :]


def random_inputs(rng, batch=4, length=5, dim=8):
    tokens = rng.normal(size=(batch, length, dim)).astype("float32")
    target = rng.normal(size=(batch, dim)).astype("float32")
    mask = np.ones((batch, length), bool)
    for b in range(batch):
        mask[b, :b] = False  # left padding; the last row may be fully padded but for 1
    mask[-1, :] = False  # a row with no real token: only the target is attended
    return tokens, target, mask


def set_random_weights(layer, rng):
    weights = {"blocks": []}
    names = ("attention_norm", "attention", "ffn_norm", "ffn_inner", "ffn_outer")
    for sublayers in layer.blocks:
        block = {}
        for name, sublayer in zip(names, sublayers, strict=True):
            values = [(rng.normal(size=w.shape) * 0.4).astype("float32") for w in sublayer.weights]
            if name.endswith("norm"):
                values[0] = values[0] + 1.0
            sublayer.set_weights(values)
            block[name] = values
        weights["blocks"].append(block)
    values = [np.ones(layer.final_norm.gamma.shape, "float32") * 1.5, np.full((8,), 0.1, "float32")]
    layer.final_norm.set_weights(values)
    weights["final_norm"] = values
    return weights


def check_transformer(seed=0, num_layers=2, num_heads=2, call=eager_call, dtype=None, atol=1e-4):
    rng = np.random.default_rng(seed)
    tokens, target, mask = random_inputs(rng)
    layer = TransformerEncoder(num_layers, num_heads, ff_dim=12, dtype=dtype)
    layer(tokens, target, mask)
    weights = set_random_weights(layer, rng)
    out, scores = to_numpy(call(layer, tokens, target, mask, return_attention_scores=True))
    want, want_scores = transformer_reference(tokens, target, mask, weights, num_heads)
    np.testing.assert_allclose(out.astype("float32"), want, atol=atol, rtol=atol)
    np.testing.assert_allclose(scores.astype("float32"), want_scores, atol=atol, rtol=atol)
    return out, scores


# --------------------------------------------------------------------------------------
# mixed_bfloat16.


def _round(x):
    return to_bf16(np.asarray(x, "float64").astype("float32"))


def _bf16_einsum(equation, a, b):
    """A bf16 einsum: bf16 operands, float32-or-better accumulation, one rounding."""
    return _round(np.einsum(equation, a.astype("float64"), b.astype("float64")))


def _bf16_layer_norm(x, gamma, beta, eps):
    """keras LayerNormalization under mixed_bfloat16: `autocast=False`, so float32 math
    on the bf16 input with the float32 gamma and beta; the output rounded once."""
    return _round(layer_norm(x.astype("float64"), gamma, beta, eps))


def _softmax(logits, key_mask):
    logits = np.where(key_mask, logits.astype("float64"), -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def _bf16_softmax(logits, key_mask):
    """keras Softmax on bf16 logits: TensorFlow computes it in float32 and rounds once;
    JAX's `jax.nn.softmax` rounds after every primitive (x - max, exp, sum, divide)."""
    if keras.backend.backend() != "jax":
        return _round(_softmax(logits, key_mask))
    logits = np.where(key_mask, logits.astype("float64"), -np.inf)
    exp = _round(np.exp(_round(logits - logits.max(-1, keepdims=True)).astype("float64")))
    return _round(exp / _round(exp.sum(-1, keepdims=True)))


def transformer_bf16_reference(tokens, target, mask, weights, num_heads, eps=1e-6):
    """The encoder as the layer computes it under mixed_bfloat16, rounding to bf16 after
    every op that runs in bf16. As `transformer_reference` (target output `[B, d]`,
    last block's target attention `[B, heads, L + 1]`), with the layer's precision:

    - bf16 inputs; Dense / EinsumDense kernels and biases cast to bf16; each
      projection a bf16 einsum, then a rounded bias add; ReLU exact.
    - LayerNormalization in float32 with float32 gamma, beta (see `_bf16_layer_norm`).
    - Blocks before the last call `ops.dot_product_attention` (no attention scores
      asked for): softmax in float32 over float32 logits `q.k * scale`, where
      TensorFlow's backend first rounds `q.k` to bf16 (a bf16 einsum) and JAX's does
      not (`preferred_element_type=float32`); the probabilities rounded to bf16.
    - The last block returns its scores, so MultiHeadAttention's explicit path runs:
      `q * bf16(1 / sqrt(dk))`, a bf16 einsum for the logits, a bf16 softmax
      (`_bf16_softmax`).
    - Residual sums rounded; dropout is the identity at inference.
    """
    x = np.concatenate([to_bf16(tokens), to_bf16(target)[:, None, :]], axis=1)  # [B, L+1, d]
    key_mask = np.concatenate([mask, np.ones((mask.shape[0], 1), bool)], axis=1)
    key_mask = key_mask[:, None, None, :]  # [B, 1, 1, L+1]
    probs = None
    for i, block in enumerate(weights["blocks"]):
        last = i == len(weights["blocks"]) - 1
        y = _bf16_layer_norm(x, *block["attention_norm"], eps)
        wq, bq, wk, bk, wv, bv, wo, bo = (to_bf16(w) for w in block["attention"])
        q = _round(_bf16_einsum("bld,dhk->bhlk", y, wq) + bq[None, :, None, :])
        k = _round(_bf16_einsum("bld,dhk->bhlk", y, wk) + bk[None, :, None, :])
        v = _round(_bf16_einsum("bld,dhk->bhlk", y, wv) + bv[None, :, None, :])
        key_dim = q.shape[-1]
        if last:
            scaled = _round(q * to_bf16(np.float32(1.0 / np.sqrt(key_dim))))
            probs = _bf16_softmax(_bf16_einsum("bhqk,bhsk->bhqs", scaled, k), key_mask)
        else:
            logits = np.einsum("bhqk,bhsk->bhqs", q.astype("float64"), k)
            if keras.backend.backend() == "tensorflow":
                logits = _round(logits)
            logits = logits.astype("float32") * np.float32(1.0 / np.sqrt(key_dim))
            probs = _round(_softmax(logits, key_mask))  # [B, heads, L+1, L+1]
        context = _bf16_einsum("bhqs,bhsk->bqhk", probs, v)
        x = _round(x + _round(_bf16_einsum("bqhk,hkd->bqd", context, wo) + bo))
        y = _bf16_layer_norm(x, *block["ffn_norm"], eps)
        (w1, b1), (w2, b2) = ([to_bf16(w) for w in block[n]] for n in ("ffn_inner", "ffn_outer"))
        hidden = np.maximum(_round(bf16_matmul(y, w1) + b1), 0.0)
        x = _round(x + _round(bf16_matmul(hidden, w2) + b2))
    out = _bf16_layer_norm(x[:, -1], *weights["final_norm"], eps)
    return out, probs[:, :, -1, :]


def check_transformer_bf16(seed=0, num_layers=2, num_heads=2, call=eager_call, ulps=2):
    """TransformerEncoder under mixed_bfloat16 against `transformer_bf16_reference`,
    within `ulps` bf16 ulps of each row's largest value (output and scores).

    Eager, the reference is bit-exact under TensorFlow and JAX (measured on 10 seeds x
    3 layer/head settings); compiled (XLA keeps some bf16 intermediates in float32)
    it differs by up to 4 ulps on the output and 6 on the scores, so `ulps` must be
    raised for `xla_call`."""
    rng = np.random.default_rng(seed)
    tokens, target, mask = random_inputs(rng)
    layer = TransformerEncoder(num_layers, num_heads, ff_dim=12, dtype="mixed_bfloat16")
    layer(tokens, target, mask)
    weights = set_random_weights(layer, rng)
    out, scores = call(layer, tokens, target, mask, return_attention_scores=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in layer.weights)
    want, want_scores = transformer_bf16_reference(tokens, target, mask, weights, num_heads)
    out, scores = to_numpy((out, scores))  # bfloat16 arrays
    for got, expected in ((out, want), (scores, want_scores)):
        scale = np.abs(expected).max(-1, keepdims=True)
        assert_bf16_close(got.astype("float32"), expected, ulps=ulps, scale=scale)
    return out, scores
