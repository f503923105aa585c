"""Tests for tfnegseq.layers.transformer.TransformerEncoder (pre-LN, target read-out)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.layers.test_polarity import (
    assert_config_round_trip,
    assert_save_load_equal,
    eager_call,
    to_numpy,
    xla_call,
)
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


@pytest.mark.parametrize("num_layers, num_heads", [(1, 1), (2, 2), (3, 4)])
def test_transformer_matches_reference(num_layers, num_heads):
    check_transformer(seed=num_layers, num_layers=num_layers, num_heads=num_heads)


def test_transformer_sublayers_and_shapes():
    tokens, target, mask = random_inputs(np.random.default_rng(0))
    layer = TransformerEncoder(2, 2, ff_dim=12)
    out, scores = layer(tokens, target, mask, return_attention_scores=True)
    assert tuple(out.shape) == (4, 8) and tuple(scores.shape) == (4, 2, 6)
    names = [s.name for block in layer.blocks for s in block] + [layer.final_norm.name]
    assert names[:5] == [
        "attention_norm_0",
        "attention_0",
        "ffn_norm_0",
        "ffn_inner_0",
        "ffn_outer_0",
    ]
    assert names[-1] == "final_norm" and len(layer.weights) == 2 * 16 + 2


def test_transformer_padding_changes_nothing():
    rng = np.random.default_rng(1)
    tokens, target, mask = random_inputs(rng)
    layer = TransformerEncoder(2, 2, ff_dim=12)
    out, scores = to_numpy(layer(tokens, target, mask, return_attention_scores=True))
    assert (
        scores[:, :, :-1][np.broadcast_to(~mask[:, None, :], scores[:, :, :-1].shape)] == 0
    ).all()
    garbage = np.where(mask[..., None], tokens, rng.normal(size=tokens.shape) * 9).astype("float32")
    extra = np.concatenate([rng.normal(size=(4, 3, 8)).astype("float32"), garbage], axis=1)
    extra_mask = np.concatenate([np.zeros((4, 3), bool), mask], axis=1)
    out2, scores2 = to_numpy(layer(extra, target, extra_mask, return_attention_scores=True))
    np.testing.assert_allclose(out2, out, atol=1e-5)
    np.testing.assert_allclose(scores2[:, :, 3:], scores, atol=1e-6)


def test_transformer_default_mask_and_dropout_inference():
    tokens, target, _ = random_inputs(np.random.default_rng(2))
    layer = TransformerEncoder(1, 2, ff_dim=12, dropout=0.5)
    full = to_numpy(layer(tokens, target, np.ones(tokens.shape[:2], bool)))
    np.testing.assert_allclose(to_numpy(layer(tokens, target)), full, atol=1e-6)
    keras.utils.set_random_seed(0)
    trained = to_numpy(layer(tokens, target, training=True))
    assert not np.allclose(trained, full)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_layers": 0}, "`num_layers` must be an integer >= 1. Received: num_layers=0"),
        ({"num_heads": 0}, "`num_heads` must be an integer >= 1"),
        ({"ff_dim": 1.5}, "`ff_dim` must be an integer >= 1"),
        ({"dropout": 1.0}, r"`dropout` must be in \[0, 1\). Received: dropout=1.0"),
    ],
)
def test_transformer_validation(kwargs, message):
    args = {"num_layers": 1, "num_heads": 2, "ff_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        TransformerEncoder(**args)


def test_transformer_build_validation():
    tokens, target, mask = random_inputs(np.random.default_rng(0))
    with pytest.raises(ValueError, match="`num_heads` must divide the token dimension"):
        TransformerEncoder(1, 3, 4)(tokens, target, mask)
    with pytest.raises(ValueError, match="`target` must have the token dimension"):
        TransformerEncoder(1, 2, 4)(tokens, target[:, :4], mask)


def test_transformer_serialization(tmp_path):
    layer = TransformerEncoder(2, 2, ff_dim=12, dropout=0.1, activation="gelu", name="encoder")
    assert_config_round_trip(layer)
    inputs = list(random_inputs(np.random.default_rng(3)))
    assert_save_load_equal(layer, inputs, tmp_path, ["float32", "float32", "bool"])


def test_transformer_xla():
    want = check_transformer(seed=4)
    got = check_transformer(seed=4, call=xla_call)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_transformer_mixed_bfloat16():
    out, _ = check_transformer(seed=5, dtype="mixed_bfloat16", atol=1.5e-1)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
