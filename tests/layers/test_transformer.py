"""Tests for tfnegseq.layers.transformer.TransformerEncoder (pre-LN, target read-out).

The numpy references and the backend-agnostic `check_*` functions live in
`tests/helpers_transformer.py` (`test_jax_backend.py` runs the same checks under JAX).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.helpers import assert_config_round_trip, assert_save_load_equal, to_numpy, xla_call
from tests.helpers_transformer import (
    check_transformer,
    check_transformer_bf16,
    random_inputs,
)
from tfnegseq.layers.transformer import TransformerEncoder


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
    """Against a reference that rounds to bf16 wherever the layer does, within 2 bf16
    ulps of each row's largest value; not float32 within 15 %."""
    out, _ = check_transformer_bf16(seed=5)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"


def test_blocks_start_from_different_kernels():
    """One unseeded initializer shared by every block gave all blocks the same initial
    kernels (Keras 3 initializers draw their seed once, at construction)."""
    layer = TransformerEncoder(num_layers=2, num_heads=2, ff_dim=12)
    layer(np.ones((1, 3, 8), "float32"), np.ones((1, 8), "float32"))
    for index in (3, 4):  # ffn_inner, ffn_outer
        first = keras.ops.convert_to_numpy(layer.blocks[0][index].kernel)
        second = keras.ops.convert_to_numpy(layer.blocks[1][index].kernel)
        assert not np.allclose(first, second)
