"""OneTrans, HyFormer and MixFormer blocks against numpy references; padding, causality,
token-specific parameters, the pyramid, XLA, mixed_bfloat16 and serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests import helpers_unified as hu
from tests.helpers import assert_config_round_trip, assert_save_load_equal, to_numpy, xla_call
from tfnegseq.layers.unified import (
    HyFormerEncoder,
    MixFormerEncoder,
    OneTransEncoder,
    PerTokenDense,
    pyramid_schedule,
    token_mixing,
)

LAYERS = {
    "onetrans": lambda: OneTransEncoder(3, 2, ff_dim=12),
    "hyformer": lambda: HyFormerEncoder(2, 2, ff_dim=12, num_queries=2),
    "mixformer": lambda: MixFormerEncoder(2, 2, ff_dim=12),
}


@pytest.mark.parametrize("num_layers, pyramid", [(1, True), (2, True), (3, True), (4, True),
                                                 (3, False)])
def test_onetrans_matches_reference(num_layers, pyramid):
    hu.check_onetrans(seed=num_layers, num_layers=num_layers, pyramid=pyramid)


def test_onetrans_one_head_long_pyramid():
    hu.check_onetrans(seed=9, num_layers=4, num_heads=1, length=9, tokens=3)


@pytest.mark.parametrize("num_layers, num_queries", [(1, 2), (2, 2), (2, 6)])
def test_hyformer_matches_reference(num_layers, num_queries):
    hu.check_hyformer(seed=num_layers, num_layers=num_layers, num_queries=num_queries)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_mixformer_matches_reference(num_layers):
    hu.check_mixformer(seed=num_layers, num_layers=num_layers)


@pytest.mark.parametrize("name", sorted(hu.CHECKS))
def test_xla_matches_reference(name):
    hu.CHECKS[name](seed=5, call=xla_call)


def test_token_mixing_hand_worked():
    # 2 tokens of width 4, 2 heads: token h = [chunk h of token 0, chunk h of token 1]
    x = np.array([[[1, 2, 3, 4], [5, 6, 7, 8]]], "float32")
    out = keras.ops.convert_to_numpy(token_mixing(x, 2))
    np.testing.assert_array_equal(out, [[[1, 2, 5, 6], [3, 4, 7, 8]]])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(token_mixing(out, 2)), x)


@pytest.mark.parametrize("length, tokens, layers, want", [
    (100, 4, 1, [0]),
    (100, 4, 2, [100, 0]),
    (100, 4, 3, [100, 52, 0]),  # the ramp 100, 52, 4 over three layers; the top keeps 0
    (100, 4, 5, [100, 76, 52, 28, 0]),
    (3, 8, 3, [3, 3, 0]),  # never more than the sequence
])
def test_pyramid_schedule(length, tokens, layers, want):
    assert pyramid_schedule(length, tokens, layers) == want


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_padding_changes_nothing(name):
    """Changing padded tokens' values, or appending more padding, leaves outputs unchanged."""
    rng = np.random.default_rng(1)
    seq, ns, mask = hu.random_inputs(rng)
    layer = LAYERS[name]()
    base = to_numpy(layer(seq, ns, mask))
    noisy = np.where(mask[..., None], seq, rng.normal(size=seq.shape) * 50).astype("float32")
    np.testing.assert_allclose(to_numpy(layer(noisy, ns, mask)), base, atol=1e-5)
    if name != "onetrans":  # OneTrans' length is static (its pyramid); the others: extend
        more = np.concatenate([rng.normal(size=(4, 3, 8)).astype("float32"), seq], 1)
        more_mask = np.concatenate([np.zeros((4, 3), bool), mask], 1)
        np.testing.assert_allclose(to_numpy(layer(more, ns, more_mask)), base, atol=1e-5)


def test_onetrans_left_padding_changes_nothing():
    """A fresh layer on the sequence with 3 more padded slots in front (same weights)."""
    rng = np.random.default_rng(2)
    seq, ns, mask = hu.random_inputs(rng)
    a = OneTransEncoder(2, 2, ff_dim=12, pyramid=False)
    b = OneTransEncoder(2, 2, ff_dim=12, pyramid=False)
    more = np.concatenate([rng.normal(size=(4, 3, 8)).astype("float32"), seq], 1)
    more_mask = np.concatenate([np.zeros((4, 3), bool), mask], 1)
    a(seq, ns, mask)
    b(more, ns, more_mask)
    b.set_weights(a.get_weights())
    np.testing.assert_allclose(to_numpy(b(more, ns, more_mask)), to_numpy(a(seq, ns, mask)),
                               atol=1e-5)


def test_onetrans_is_causal():
    """Behaviour token j's output ignores later tokens; NS token j ignores later NS tokens;
    every NS token sees every behaviour token."""
    rng = np.random.default_rng(3)
    seq, ns, mask = hu.random_inputs(rng, tokens=3)
    mask[:] = True
    layer = OneTransEncoder(2, 2, ff_dim=12, pyramid=False)
    out, seq_out = to_numpy(layer(seq, ns, mask, return_sequence=True))
    later = seq.copy()
    later[:, 4:] += 3.0
    out2, seq_out2 = to_numpy(layer(later, ns, mask, return_sequence=True))
    np.testing.assert_allclose(seq_out2[:, :4], seq_out[:, :4], atol=1e-6)
    assert np.abs(seq_out2[:, 4:] - seq_out[:, 4:]).max() > 1e-2
    assert np.abs(out2 - out).min(axis=(0, 2)).min() > 0  # every NS token saw the change
    ns2 = ns.copy()
    ns2[:, 1] += 3.0
    out3, seq_out3 = to_numpy(layer(seq, ns2, mask, return_sequence=True))
    np.testing.assert_allclose(out3[:, 0], out[:, 0], atol=1e-6)
    np.testing.assert_allclose(seq_out3, seq_out, atol=1e-6)  # behaviour never sees NS
    assert np.abs(out3[:, 1:] - out[:, 1:]).max() > 1e-2


def test_onetrans_token_specific_parameters():
    """Each NS token has its own, independently initialised kernel slice; changing the
    FFN slice of token 1 alone changes NS token 1's output only."""
    rng = np.random.default_rng(4)
    seq, ns, mask = hu.random_inputs(rng, tokens=3)
    layer = OneTransEncoder(1, 2, ff_dim=12)
    base = to_numpy(layer(seq, ns, mask))
    per_token = [w for w in layer.weights if "/ns_" in w.path and w.path.endswith("kernel")]
    assert per_token and all(w.shape[0] == 3 for w in per_token)
    for w in per_token:  # initialised independently per token
        value = keras.ops.convert_to_numpy(w)
        assert not np.allclose(value[0], value[1])
    ffn = layer.blocks[0]["ns_ffn_outer"].kernel
    value = keras.ops.convert_to_numpy(ffn).copy()
    value[1] += 0.5
    ffn.assign(value)
    out = to_numpy(layer(seq, ns, mask))
    np.testing.assert_allclose(out[:, 0], base[:, 0], atol=1e-6)
    np.testing.assert_allclose(out[:, 2], base[:, 2], atol=1e-6)  # FFN is per token: no mixing
    assert np.abs(out[:, 1] - base[:, 1]).max() > 1e-2
    # behaviour tokens share one set of weights: plain Dense kernels
    assert layer.blocks[0]["seq_qkv"].kernel.shape == (8, 24)


def test_onetrans_pyramid_keeps_the_most_recent_tokens():
    """With the pyramid, the tokens entering the last layer are the most recent `end`;
    perturbing the oldest behaviour token still reaches the output (through layer 0's
    keys) but is not among them, and the reference that keeps the *tail* is matched."""
    rng = np.random.default_rng(5)
    seq, ns, mask = hu.random_inputs(rng, length=8, tokens=2)
    mask[:] = True
    layer = OneTransEncoder(3, 2, ff_dim=12)
    out, entering = to_numpy(layer(seq, ns, mask, return_sequence=True))
    assert layer.schedule == [8, 5, 0]  # the ramp 8, 5, 2; the top layer keeps none
    assert entering.shape == (4, 5, 8)
    want, want_entering, _ = hu.onetrans_reference(layer, seq, ns, mask, 2)
    np.testing.assert_allclose(entering, want_entering, atol=1e-4)
    # the five entering tokens (3..7) are causal functions of tokens 0..7: changing
    # token 7 (the most recent) changes the last one only; changing only token 0
    # changes them all (it is a key for every query) -- but no output position
    # corresponds to token 0
    older = seq.copy()
    older[:, 0] += 3.0
    _, entering_old = to_numpy(layer(older, ns, mask, return_sequence=True))
    assert np.abs(entering_old - entering).max() > 1e-3
    recent = seq.copy()
    recent[:, 7] += 3.0
    _, entering_recent = to_numpy(layer(recent, ns, mask, return_sequence=True))
    np.testing.assert_allclose(entering_recent[:, :4], entering[:, :4], atol=1e-6)  # 3..6
    assert np.abs(entering_recent[:, 4] - entering[:, 4]).max() > 1e-2  # token 7


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_fully_padded_row_is_finite(name):
    rng = np.random.default_rng(6)
    seq, ns, mask = hu.random_inputs(rng)
    out = to_numpy(LAYERS[name]()(seq, ns, np.zeros_like(mask)))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_mixed_bfloat16_is_close_to_float32(name):
    rng = np.random.default_rng(7)
    seq, ns, mask = hu.random_inputs(rng)
    f32 = LAYERS[name]()
    want = to_numpy(f32(seq, ns, mask))
    layer = type(f32).from_config({**f32.get_config(), "dtype": "mixed_bfloat16"})
    layer(seq, ns, mask)
    layer.set_weights(f32.get_weights())
    out = to_numpy(layer(seq, ns, mask))
    assert out.dtype.name == "bfloat16" or str(out.dtype) == "bfloat16"
    assert all(w.dtype == "float32" for w in layer.weights)
    np.testing.assert_allclose(out.astype("float32"), want, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_serialization(name, tmp_path):
    rng = np.random.default_rng(8)
    seq, ns, mask = hu.random_inputs(rng)
    layer = LAYERS[name]()
    assert_config_round_trip(layer)
    assert_save_load_equal(layer, (seq, ns, mask), tmp_path, ("float32", "float32", "bool"))


@pytest.mark.parametrize("make, message", [
    (lambda: OneTransEncoder(0, 2, 8), "num_layers"),
    (lambda: HyFormerEncoder(1, 2, 8, num_queries=0), "num_queries"),
    (lambda: MixFormerEncoder(1, 2, 8, dropout=1.0), "dropout"),
    (lambda: PerTokenDense(0), "units"),
])
def test_argument_validation(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("layer, tokens, message", [
    (HyFormerEncoder(1, 2, 8, num_queries=1), 2, "divide the width"),  # 1 + 2 = 3 ∤ 8
    (MixFormerEncoder(1, 2, 8), 3, "divide the width"),
    (OneTransEncoder(1, 3, 8), 2, "num_heads"),
])
def test_build_validation(layer, tokens, message):
    rng = np.random.default_rng(0)
    seq, ns, mask = hu.random_inputs(rng, tokens=tokens)
    with pytest.raises(ValueError, match=message):
        layer(seq, ns, mask)
