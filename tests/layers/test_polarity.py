"""Tests for tfnegseq.layers.polarity: mixed-polarity sequences, PBE (eq. 2), TAPF (eq. 3-5).

The numpy references of the paper and the backend-agnostic `check_*` functions live in
`tests/helpers_polarity.py` (`test_jax_backend.py` runs the same checks under JAX).
"""

from __future__ import annotations

import fractions

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import (
    assert_config_round_trip,
    assert_save_load_equal,
    eager_call,
    to_numpy,
    xla_call,
)
from tests.helpers_polarity import (
    TAPF_ROWS,
    check_mixed_sequence,
    check_pbe,
    check_pbe_bf16,
    check_tapf,
    check_tapf_bf16,
    mixed_sequence_reference,
    pbe_reference,
    random_histories,
    random_tokens,
    set_random_weights,
    tapf_case,
    tapf_reference,
)
from tfnegseq.layers.polarity import (
    MixedPolaritySequence,
    PolarityBiasEmbedding,
    TargetAwarePolarityFusion,
)

# --------------------------------------------------------------------------------------
# Mixed-polarity sequence (§3.3).


@pytest.mark.parametrize("mode", ["interleaved", "grouped"])
@pytest.mark.parametrize(
    "ratio, length", [(0.5, 6), (0.3, 10), (0.55, 11), (1.0, 5), (0.0, 5), (0.5, 20), (0.75, 3)]
)
def test_mixed_sequence_matches_reference(mode, ratio, length):
    check_mixed_sequence(mode, ratio, length, seed=int(ratio * 100) + length)


def test_mixed_sequence_docstring_example():
    layer = MixedPolaritySequence(length=4, positive_ratio=0.5)
    items, polarity = to_numpy(
        layer(
            np.array([[0, 7, 8]]),
            np.array([[0, 1, 5]]),
            np.array([[3, 4, 9]]),
            np.array([[2, 3, 6]]),
        )
    )
    np.testing.assert_array_equal(items, [[7, 4, 8, 9]])
    np.testing.assert_array_equal(polarity, [[1, -1, 1, -1]])


def test_mixed_sequence_grouped_and_ties_by_hand():
    pos = (np.array([[0, 5, 6]]), np.array([[0, 2, 4]]))
    neg = (np.array([[7, 8, 9]]), np.array([[1, 2, 3]]))
    items, polarity = to_numpy(MixedPolaritySequence(6, 0.5)(*pos, *neg))
    np.testing.assert_array_equal(items, [[0, 7, 5, 8, 9, 6]])  # tie at order 2: positive first
    np.testing.assert_array_equal(polarity, [[0, -1, 1, -1, -1, 1]])
    items, polarity = to_numpy(MixedPolaritySequence(6, 0.5, mode="grouped")(*pos, *neg))
    np.testing.assert_array_equal(items, [[0, 5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(polarity, [[0, 1, 1, -1, -1, -1]])


@pytest.mark.parametrize(
    "ratio, length, num_pos, num_neg",
    [
        (0.29, 100, 29, 71),  # 0.29 * 100 == 28.999999999999996 in floats
        (0.57, 100, 57, 43),  # 56.99999999999999
        (0.55, 11, 6, 4),  # 6.05, 4.95
        (0.3, 10, 3, 7),
        (0.2999999, 10, 2, 7),  # 2.999999, 7.000001
        (0.29999999, 10, 2, 7),  # 2.9999999, 7.0000001 (rounding to 6 places gave 3)
        (0.70000001, 10, 7, 2),  # 7.0000001, 2.9999999 (gave 3 negatives)
        (0.99999999, 1, 0, 0),  # 0.99999999, 0.00000001 (gave 1 positive)
        (0.9999999, 1, 0, 0),
        (0.333333333, 3, 0, 2),  # 0.999999999, 2.000000001
        (1 / 3, 3, 0, 2),  # repr 0.3333333333333333: 0.9999999999999999 (gave 1)
        (2 / 3, 3, 1, 1),  # repr 0.6666666666666666: 1.9999999999999998, 1.0000000000000002
        (0.123456789, 1000, 123, 876),
        (1e-05, 100000, 1, 99999),
        (0.0, 7, 0, 7),
        (1.0, 7, 7, 0),
        (1, 7, 7, 0),
    ],
)
def test_mixed_sequence_budget_is_floor(ratio, length, num_pos, num_neg):
    """floor(r L) and floor((1 - r) L) exactly, for the decimal value `repr(r)` shows."""
    layer = MixedPolaritySequence(length, ratio)
    assert (layer.num_positive, layer.num_negative) == (num_pos, num_neg)


def test_mixed_sequence_budget_is_floor_with_reference():
    for ratio, length in ((0.29, 100), (0.55, 11), (0.29999999, 10), (0.70000001, 10)):
        check_mixed_sequence("interleaved", ratio, length, seed=3)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(digits=st.integers(0, 10**9), places=st.integers(0, 9), length=st.integers(1, 10**6))
def test_mixed_sequence_budget_matches_integer_arithmetic(digits, places, length):
    """r = digits / 10**places written as a decimal: floor(r L) == digits * L // 10**places."""
    scale = 10**places
    if digits > scale:
        digits = digits % (scale + 1)
    ratio = float(f"{digits // scale}.{digits % scale:0{places}d}" if places else digits)
    assert fractions.Fraction(str(ratio)) == fractions.Fraction(digits, scale)
    layer = MixedPolaritySequence(length, ratio)
    assert layer.num_positive == digits * length // scale
    assert layer.num_negative == (scale - digits) * length // scale


@pytest.mark.parametrize("mode", ["interleaved", "grouped"])
def test_mixed_sequence_padding_changes_nothing(mode):
    rng = np.random.default_rng(1)
    pos_item, pos_order, neg_item, neg_order = random_histories(rng, 8, 6)
    layer = MixedPolaritySequence(8, 0.5, mode=mode)
    expected = to_numpy(layer(pos_item, pos_order, neg_item, neg_order))

    def pad(items, orders, extra):  # extra empty slots on the left, garbage orders in empties
        items = np.concatenate([np.zeros((8, extra), items.dtype), items], axis=1)
        orders = np.concatenate([np.zeros((8, extra), orders.dtype), orders], axis=1)
        return items, np.where(items == 0, rng.integers(-50, 50, orders.shape), orders)

    actual = to_numpy(layer(*pad(pos_item, pos_order, 5), *pad(neg_item, neg_order, 2)))
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_array_equal(actual[1], expected[1])


def test_mixed_sequence_keeps_item_dtype():
    inputs = [x.astype("int32") for x in random_histories(np.random.default_rng(2), 4, 5)]
    items, polarity = to_numpy(MixedPolaritySequence(4, 0.5)(*inputs))
    assert items.dtype == np.int32 and polarity.dtype == np.int32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"length": 4, "positive_ratio": 1.5},
            r"`positive_ratio` must be in \[0, 1\]. Received: positive_ratio=1.5",
        ),
        ({"length": 4, "positive_ratio": -0.1}, "`positive_ratio` must be in"),
        (
            {"length": 0, "positive_ratio": 0.5},
            "`length` must be an integer >= 1. Received: length=0",
        ),
        ({"length": 2.0, "positive_ratio": 0.5}, "`length` must be an integer >= 1"),
        ({"length": 4, "positive_ratio": 0.5, "mode": "sorted"}, "`mode` must be one of"),
    ],
)
def test_mixed_sequence_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixedPolaritySequence(**kwargs)


def test_mixed_sequence_serialization(tmp_path):
    layer = MixedPolaritySequence(6, 0.5, mode="grouped", name="mixed")
    assert_config_round_trip(layer)
    inputs = random_histories(np.random.default_rng(4), 5, 7)
    assert_save_load_equal(layer, inputs, tmp_path, ["int64"] * 4)


@pytest.mark.parametrize("mode", ["interleaved", "grouped"])
def test_mixed_sequence_xla(mode):
    check_mixed_sequence(mode, 0.5, 8, seed=5, call=xla_call)


def test_mixed_sequence_mixed_bfloat16():
    check_mixed_sequence("interleaved", 0.5, 8, seed=6, dtype="mixed_bfloat16")


# --------------------------------------------------------------------------------------
# Polarity Bias Embedding (eq. 2).


def test_pbe_matches_reference():
    check_pbe()


def test_pbe_is_zero_initialised_and_named():
    tokens, _, polarity = random_tokens(np.random.default_rng(1))
    layer = PolarityBiasEmbedding()
    np.testing.assert_array_equal(to_numpy(layer(tokens, polarity)), tokens)
    assert layer.embeddings.name == "embeddings"
    assert tuple(layer.embeddings.embeddings.shape) == (3, 8)


def test_pbe_padding_unchanged_and_padding_row_unused():
    rng = np.random.default_rng(2)
    tokens, _, polarity = random_tokens(rng)
    layer = PolarityBiasEmbedding(embeddings_initializer="random_normal")
    out = to_numpy(layer(tokens, polarity))
    np.testing.assert_array_equal(out[polarity == 0], tokens[polarity == 0])
    table = layer.embeddings.get_weights()[0]
    table[1] = 100.0  # the padding row
    layer.embeddings.set_weights([table])
    np.testing.assert_array_equal(to_numpy(layer(tokens, polarity)), out)


def test_pbe_serialization(tmp_path):
    layer = PolarityBiasEmbedding(embeddings_initializer="random_normal", name="pbe")
    assert_config_round_trip(layer)
    tokens, _, polarity = random_tokens(np.random.default_rng(3))
    assert_save_load_equal(layer, [tokens, polarity], tmp_path, ["float32", "int32"])


def test_pbe_xla():
    np.testing.assert_allclose(check_pbe(seed=4, call=xla_call), check_pbe(seed=4), atol=1e-6)


# --------------------------------------------------------------------------------------
# Target-Aware Polarity Fusion (eq. 3-5), one case per row of Table 3.


@pytest.mark.parametrize("row", sorted(TAPF_ROWS))
def test_tapf_matches_reference(row):
    check_tapf(row, seed=len(row))


@pytest.mark.parametrize("row", sorted(TAPF_ROWS))
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shared_dim", [None, 5, 8], ids=["own", "shared5", "shared8"])
def test_tapf_matches_reference_with_deviation_switches(row, use_bias, shared_dim):
    """Every Table 3 row with and without the Dense biases, with its own polarity table
    or a shared one (narrower than d and as wide as d)."""
    check_tapf(row, seed=len(row) + 3, use_bias=use_bias, shared_dim=shared_dim)


@pytest.mark.parametrize("shared_dim", [None, 5], ids=["own", "shared"])
@pytest.mark.parametrize("row", ["full", "no_polarity_embedding"])
def test_tapf_deviation_switches_xla(row, shared_dim):
    np.testing.assert_allclose(
        check_tapf(row, seed=12, call=xla_call, use_bias=False, shared_dim=shared_dim),
        check_tapf(row, seed=12, use_bias=False, shared_dim=shared_dim),
        atol=1e-5,
    )


def test_tapf_use_bias_false_creates_no_biases():
    tokens, target, polarity = random_tokens(np.random.default_rng(0))
    layer = TargetAwarePolarityFusion(use_bias=False)
    layer(tokens, target, polarity)
    assert layer.interaction.bias is None and layer.gate.bias is None
    assert sorted(w.name for w in layer.weights) == ["embeddings", "kernel", "kernel"]
    assert tuple(layer.gate.kernel.shape) == (2 * 8 + 8, 8)


def test_tapf_shared_polarity_embedding_sublayers():
    tokens, target, polarity = random_tokens(np.random.default_rng(0))
    table = np.ones((3, 5), "float32")
    layer = TargetAwarePolarityFusion(shared_polarity_embedding=True)
    layer(tokens, target, polarity, polarity_embeddings=table)
    assert layer.polarity_embedding is None
    assert tuple(layer.gate.kernel.shape) == (2 * 8 + 5, 8)  # the table's width
    assert len(layer.weights) == 4  # interaction and gate kernels and biases
    bare = TargetAwarePolarityFusion(shared_polarity_embedding=True, use_bias=False)
    bare(tokens, target, polarity, polarity_embeddings=table)
    assert len(bare.weights) == 2


def test_tapf_shared_table_gives_the_same_outputs_as_an_own_table():
    layer, inputs, kwargs, weights, _ = tapf_case("full", seed=13, shared_dim=8)
    own = TargetAwarePolarityFusion()
    own(*inputs)
    own.interaction.set_weights(weights["interaction"])
    own.gate.set_weights(weights["gate"])
    own.polarity_embedding.set_weights(weights["polarity_embedding"])
    np.testing.assert_allclose(
        to_numpy(layer(*inputs, **kwargs)), to_numpy(own(*inputs)), atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("row", ["no_gating", "no_polarity_embedding"])
def test_tapf_shared_table_optional_when_the_gate_does_not_use_it(row):
    tokens, target, polarity = random_tokens(np.random.default_rng(14))
    layer = TargetAwarePolarityFusion(shared_polarity_embedding=True, **TAPF_ROWS[row])
    out = to_numpy(layer(tokens, target, polarity))
    table = np.full((3, 8), 5.0, "float32")
    np.testing.assert_array_equal(
        to_numpy(layer(tokens, target, polarity, polarity_embeddings=table)), out
    )
    assert layer.polarity_embedding is None


def test_tapf_shared_polarity_embedding_validation():
    tokens, target, polarity = random_tokens(np.random.default_rng(0))
    with pytest.raises(
        ValueError,
        match="`shared_polarity_embedding=True` needs the `polarity_embeddings` call argument",
    ):
        TargetAwarePolarityFusion(shared_polarity_embedding=True)(tokens, target, polarity)
    layer = TargetAwarePolarityFusion(shared_polarity_embedding=True)
    layer(tokens, target, polarity, polarity_embeddings=np.ones((3, 4), "float32"))
    with pytest.raises(ValueError, match="needs the `polarity_embeddings` call argument"):
        layer(tokens, target, polarity)  # built, then called without the table
    with pytest.raises(ValueError, match=r"`polarity_embeddings` must have shape \[3, d_p\]"):
        TargetAwarePolarityFusion(shared_polarity_embedding=True)(
            tokens, target, polarity, polarity_embeddings=np.ones((4, 4), "float32")
        )
    with pytest.raises(ValueError, match="`polarity_dim` must be None or equal the width"):
        TargetAwarePolarityFusion(shared_polarity_embedding=True, polarity_dim=3)(
            tokens, target, polarity, polarity_embeddings=np.ones((3, 4), "float32")
        )
    with pytest.raises(
        ValueError, match="`polarity_embeddings` is only read with `shared_polarity_embedding=True`"
    ):
        TargetAwarePolarityFusion()(
            tokens, target, polarity, polarity_embeddings=np.ones((3, 8), "float32")
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"use_bias": False},
        {"shared_polarity_embedding": True},
        {"use_bias": False, "shared_polarity_embedding": True, "polarity_dim": 8},
    ],
    ids=["no_bias", "shared", "both"],
)
def test_tapf_deviation_switches_serialization(kwargs, tmp_path):
    layer = TargetAwarePolarityFusion(name="tapf", **kwargs)
    assert_config_round_trip(layer)
    config = layer.get_config()
    assert config["use_bias"] is kwargs.get("use_bias", True)
    assert config["shared_polarity_embedding"] is kwargs.get("shared_polarity_embedding", False)
    rng = np.random.default_rng(15)
    inputs = list(random_tokens(rng))
    dtypes = ["float32", "float32", "int32"]
    if kwargs.get("shared_polarity_embedding"):
        inputs.append(rng.normal(size=(3, 8)).astype("float32"))  # a fourth model input
        dtypes.append("float32")
    assert_save_load_equal(layer, inputs, tmp_path, dtypes)


def test_tapf_config_without_new_keys_keeps_the_defaults():
    """A config saved before `use_bias` / `shared_polarity_embedding` existed loads
    with the old behaviour."""
    config = TargetAwarePolarityFusion(name="tapf").get_config()
    del config["use_bias"], config["shared_polarity_embedding"]
    layer = TargetAwarePolarityFusion.from_config(config)
    assert layer.use_bias is True and layer.shared_polarity_embedding is False


@keras.saving.register_keras_serializable(package="tfnegseq_tests")
class PbeTapfModel(keras.Model):
    """PBE then TAPF reading PBE's polarity table, as a CTR model wires them."""

    def __init__(self, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.use_bias = use_bias
        self.pbe = PolarityBiasEmbedding(embeddings_initializer="random_normal", name="pbe")
        self.tapf = TargetAwarePolarityFusion(
            use_bias=use_bias, shared_polarity_embedding=True, name="tapf"
        )

    def call(self, inputs):
        tokens, target, polarity = inputs
        hidden = self.pbe(tokens, polarity)
        table = self.pbe.embeddings.embeddings  # [3, d]: rows -1, 0, +1
        return self.tapf(hidden, target, polarity, polarity_embeddings=table)

    def get_config(self):
        return {**super().get_config(), "use_bias": self.use_bias}


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
def test_tapf_shared_with_pbe_save_load(use_bias, tmp_path):
    inputs = random_tokens(np.random.default_rng(16))
    model = PbeTapfModel(use_bias=use_bias)
    expected = to_numpy(model(inputs))
    table = model.pbe.embeddings.get_weights()[0]
    assert model.tapf.polarity_embedding is None
    weights = {
        "interaction": model.tapf.interaction.get_weights(),
        "gate": model.tapf.gate.get_weights(),
        "polarity_embedding": [table],
    }
    hidden = pbe_reference(inputs[0], inputs[2], table)
    want = tapf_reference(hidden, inputs[1], inputs[2], weights, {})
    np.testing.assert_allclose(expected, want, atol=1e-5, rtol=1e-5)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(to_numpy(loaded(inputs)), expected)


def test_tapf_polarity_dim_and_sublayers():
    check_tapf("full", seed=1, polarity_dim=3)
    layer = TargetAwarePolarityFusion(polarity_dim=3)
    layer(*random_tokens(np.random.default_rng(0)))
    assert tuple(layer.gate.kernel.shape) == (2 * 8 + 3, 8)
    assert tuple(layer.polarity_embedding.embeddings.shape) == (3, 3)
    assert tuple(layer.interaction.kernel.shape) == (8, 8)
    bare = TargetAwarePolarityFusion(use_gating=False)
    bare(*random_tokens(np.random.default_rng(0)))
    assert bare.gate is None and bare.polarity_embedding is None and len(bare.weights) == 2


def test_tapf_switches_change_the_output():
    outputs = {row: check_tapf(row, seed=7) for row in TAPF_ROWS}
    rows = sorted(outputs)
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            assert not np.allclose(outputs[a], outputs[b]), (a, b)


@pytest.mark.parametrize("row", ["full", "no_residual"])
def test_tapf_padding_unchanged(row):
    rng = np.random.default_rng(8)
    tokens, target, polarity = random_tokens(rng)
    layer = TargetAwarePolarityFusion(**TAPF_ROWS[row])
    out = to_numpy(layer(tokens, target, polarity))
    np.testing.assert_array_equal(out[polarity == 0], tokens[polarity == 0])
    garbage = np.where((polarity == 0)[..., None], rng.normal(size=tokens.shape) * 9, tokens)
    out2 = to_numpy(layer(garbage.astype("float32"), target, polarity))
    np.testing.assert_allclose(out2[polarity != 0], out[polarity != 0], atol=1e-6)


def test_tapf_validation():
    with pytest.raises(ValueError, match="`polarity_dim` must be None or an integer >= 1"):
        TargetAwarePolarityFusion(polarity_dim=0)
    tokens, target, polarity = random_tokens(np.random.default_rng(0))
    with pytest.raises(ValueError, match="`target` must have the token dimension"):
        TargetAwarePolarityFusion()(tokens, target[:, :4], polarity)


def test_tapf_serialization(tmp_path):
    layer = TargetAwarePolarityFusion(
        polarity_dim=4, use_polarity_sign=False, kernel_initializer="he_normal", name="tapf"
    )
    assert_config_round_trip(layer)
    tokens, target, polarity = random_tokens(np.random.default_rng(9))
    assert_save_load_equal(
        layer, [tokens, target, polarity], tmp_path, ["float32", "float32", "int32"]
    )


@pytest.mark.parametrize("row", ["full", "no_target_interaction_no_gating"])
def test_tapf_xla(row):
    np.testing.assert_allclose(
        check_tapf(row, seed=10, call=xla_call), check_tapf(row, seed=10), atol=1e-5
    )


# --------------------------------------------------------------------------------------
# mixed_bfloat16: numpy references that round to bfloat16 after every op the layers
# compute in bfloat16 (tests.helpers_polarity), compared within 2 bf16 ulps. A float32
# reference would need a tolerance of several percent, which hides real bugs.


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_pbe_mixed_bfloat16(call):
    for seed in (5, 6):
        check_pbe_bf16(seed=seed, call=call)


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
@pytest.mark.parametrize("row", sorted(TAPF_ROWS))
def test_tapf_mixed_bfloat16(row, call):
    """Large weights, and small ones (updates a few percent of the tokens, where a
    float32 reference with a percent-level tolerance could not tell a component off)."""
    check_tapf_bf16(row, seed=11, call=call)
    check_tapf_bf16(row, seed=12, call=call, weight_scale=0.15)


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
@pytest.mark.parametrize("row", ["full", "no_polarity_embedding"])
@pytest.mark.parametrize("shared_dim", [None, 5], ids=["own", "shared"])
def test_tapf_mixed_bfloat16_deviation_switches(row, shared_dim, call):
    check_tapf_bf16(row, seed=13, call=call, use_bias=False, shared_dim=shared_dim)
    check_tapf_bf16(row, seed=14, call=call, use_bias=True, shared_dim=shared_dim)


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_tapf_mixed_bfloat16_at_chunked_size(call):
    """256 x 64 tokens: the bf16 matmuls take token_matmul's chunked path."""
    check_tapf_bf16("full", seed=15, call=call, batch=256, length=64)


# --------------------------------------------------------------------------------------
# Gradients: the padding row (row 1, polarity 0) of every polarity table gets none.

requires_tf = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="uses tf.GradientTape"
)


def table_gradient(forward, variable, out_shape, seed):
    """d sum(forward() * w) / d variable for a random `w`, as a numpy array."""
    import tensorflow as tf

    weights = np.random.default_rng(seed).normal(size=out_shape).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(forward() * weights)
    return keras.ops.convert_to_numpy(tf.convert_to_tensor(tape.gradient(loss, variable)))


def assert_only_padding_row_is_zero(grad):
    assert grad.shape[0] == 3
    np.testing.assert_array_equal(grad[1], np.zeros_like(grad[1]))  # padding: exactly 0
    assert np.abs(grad[0]).min() > 0 and np.abs(grad[2]).min() > 0  # -1 and +1 rows used


@requires_tf
def test_pbe_padding_row_gets_no_gradient():
    tokens, _, polarity = random_tokens(np.random.default_rng(30))
    assert {-1, 0, 1} <= set(polarity.ravel().tolist())
    layer = PolarityBiasEmbedding(embeddings_initializer="random_normal")
    layer(tokens, polarity)
    grad = table_gradient(
        lambda: layer(tokens, polarity), layer.embeddings.embeddings, tokens.shape, seed=31
    )
    assert_only_padding_row_is_zero(grad)


@requires_tf
@pytest.mark.parametrize("row", ["full", "no_polarity_sign", "no_residual"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
def test_tapf_padding_row_gets_no_gradient(row, use_bias):
    layer, inputs, _, _, _ = tapf_case(row, seed=32, use_bias=use_bias)
    grad = table_gradient(
        lambda: layer(*inputs), layer.polarity_embedding.embeddings, inputs[0].shape, seed=33
    )
    assert_only_padding_row_is_zero(grad)


@requires_tf
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
def test_shared_table_padding_row_gets_no_gradient(use_bias):
    """PBE's table read by PBE and, shared, by TAPF's gate: both paths leave row 1 alone."""
    inputs = random_tokens(np.random.default_rng(34))
    model = PbeTapfModel(use_bias=use_bias)
    model(inputs)
    grad = table_gradient(
        lambda: model(inputs), model.pbe.embeddings.embeddings, inputs[0].shape, seed=35
    )
    assert_only_padding_row_is_zero(grad)
    pbe_only = table_gradient(
        lambda: model.pbe(inputs[0], inputs[2]),
        model.pbe.embeddings.embeddings,
        inputs[0].shape,
        seed=35,
    )
    assert not np.allclose(grad, pbe_only)  # TAPF's gate does send gradient to the table


# --------------------------------------------------------------------------------------
# Production sizes: the scatter / take_along_axis merge at L = 100 and TAPF on enough
# tokens for token_matmul's chunked path.


@pytest.mark.parametrize("mode", ["interleaved", "grouped"])
@pytest.mark.parametrize("ratio", [0.5, 0.3, 1.0, 0.0])
def test_mixed_sequence_matches_reference_at_length_100(mode, ratio):
    rng = np.random.default_rng(20)
    for holes in (0.0, 0.3):
        inputs = random_histories(rng, batch=48, max_history=120, max_order=400, holes=holes)
        want_items, want_polarity = mixed_sequence_reference(*inputs, 100, ratio, mode)
        for call in (eager_call, xla_call):
            layer = MixedPolaritySequence(100, ratio, mode=mode)
            items, polarity = to_numpy(call(layer, *inputs))
            np.testing.assert_array_equal(items, want_items)
            np.testing.assert_array_equal(polarity, want_polarity)


@pytest.mark.parametrize("row", ["full", "no_polarity_embedding", "no_residual"])
def test_tapf_matches_reference_at_chunked_size(row):
    """256 x 64 tokens: every per-token matmul takes token_matmul's chunked path."""
    rng = np.random.default_rng(21)
    tokens, target, polarity = random_tokens(rng, batch=256, length=64, dim=8)
    polarity[:, :3] = 0
    layer = TargetAwarePolarityFusion(**TAPF_ROWS[row])
    layer(tokens, target, polarity)
    weights = set_random_weights(layer, rng)
    want = tapf_reference(tokens, target, polarity, weights, TAPF_ROWS[row])
    for call in (eager_call, xla_call):
        out = to_numpy(call(layer, tokens, target, polarity))
        np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(out[polarity == 0], tokens[polarity == 0])


@pytest.mark.parametrize("mode", ["interleaved", "grouped"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_mixed_sequence_empty_slots_anywhere(mode, ratio, call):
    """Empty slots (item 0) between and after real ones are skipped: the most recent
    floor(r L) real positives and floor((1 - r) L) real negatives are kept, however far
    left they sit (histories longer and shorter than the budget)."""
    rng = np.random.default_rng(22 + int(10 * ratio))
    for max_history, holes in ((12, 0.2), (30, 0.6), (3, 0.3)):
        inputs = random_histories(rng, 32, max_history, max_order=80, holes=holes)
        want = mixed_sequence_reference(*inputs, 10, ratio, mode)
        got = to_numpy(call(MixedPolaritySequence(10, ratio, mode=mode), *inputs))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_mixed_sequence_empty_slots_by_hand():
    pos = (np.array([[5, 6, 0, 0, 7]]), np.array([[1, 2, 77, -3, 9]]))
    neg = (np.array([[3, 0, 4, 0, 0]]), np.array([[4, 99, 8, -5, 0]]))
    items, polarity = to_numpy(MixedPolaritySequence(4, 0.5)(*pos, *neg))
    np.testing.assert_array_equal(items, [[6, 3, 4, 7]])  # orders 2, 4, 8, 9
    np.testing.assert_array_equal(polarity, [[1, -1, -1, 1]])
    items, polarity = to_numpy(MixedPolaritySequence(4, 0.5, mode="grouped")(*pos, *neg))
    np.testing.assert_array_equal(items, [[6, 7, 3, 4]])
    np.testing.assert_array_equal(polarity, [[1, 1, -1, -1]])
    items, polarity = to_numpy(MixedPolaritySequence(6, 0.5)(*pos, *neg))  # all 3 + 2 real
    np.testing.assert_array_equal(items, [[0, 5, 6, 3, 4, 7]])
    np.testing.assert_array_equal(polarity, [[0, 1, 1, -1, -1, 1]])


def window_only_histories(rng, batch, max_history, k):
    """Histories whose k most recent events all lie in the last k columns: either at
    most k events there with holes between them, or k events there and older ones
    (with holes) further left."""
    items, orders = [], []
    for _ in range(2):
        item = rng.integers(1, 1000, (batch, max_history))
        item[::2, :-k] = 0  # even rows: only the last k columns can hold events
        item[::2, -k:][rng.random((len(item[::2]), k)) < 0.4] = 0
        item[1::2, :-k][rng.random((len(item[1::2]), max_history - k)) < 0.4] = 0
        order = np.cumsum(rng.integers(1, 3, item.shape), axis=1)
        items.append(item)
        orders.append(np.where(item == 0, -9, order))
    return items[0], orders[0], items[1], orders[1]


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_mixed_sequence_holes_inside_the_window(call, monkeypatch):
    """Holes where the k most recent events are already in the last k columns: the
    layer reads those columns as they are (under TensorFlow eager it is checked that
    nothing is compacted) and still skips the holes."""
    rng = np.random.default_rng(23)
    inputs = window_only_histories(rng, 16, 12, k=5)
    if call is eager_call and keras.backend.backend() == "tensorflow":

        def no_compaction(*args):
            raise AssertionError("compacted a batch whose events need no moving")

        monkeypatch.setattr(MixedPolaritySequence, "_compact", staticmethod(no_compaction))
    for mode in ("interleaved", "grouped"):
        want = mixed_sequence_reference(*inputs, 10, 0.5, mode)
        got = to_numpy(call(MixedPolaritySequence(10, 0.5, mode=mode), *inputs))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert (want[0] != 0).sum() < 16 * 10  # the holes left some slots empty


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow signatures")
def test_mixed_sequence_unknown_history_length():
    """A graph with an unknown history length H (e.g. a serving signature) compacts
    every batch; same outputs as the reference, for H above and below the budget."""
    import tensorflow as tf

    layer = MixedPolaritySequence(10, 0.5)
    spec = tf.TensorSpec([None, None], tf.int64)
    fn = tf.function(lambda *x: layer(*x), input_signature=[spec] * 4)
    rng = np.random.default_rng(24)
    for max_history in (12, 3):
        inputs = random_histories(rng, 16, max_history, max_order=40, holes=0.3)
        want = mixed_sequence_reference(*inputs, 10, 0.5, "interleaved")
        got = to_numpy(fn(*inputs))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.integers(0, 3), min_size=6, max_size=6),
            st.lists(st.integers(0, 3), min_size=6, max_size=6),
        ),
        min_size=1,
        max_size=4,
    ),
    ratio=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    mode=st.sampled_from(["interleaved", "grouped"]),
)
def test_mixed_sequence_property(rows, ratio, mode):
    """Hypothesis: slot kinds 0 = empty, else a real event; orders increase over real
    slots (gaps of 1-3 so positives and negatives tie); items are drawn from the kinds."""

    def side(kinds_per_row):
        items = np.zeros((len(rows), 6), "int64")
        orders = np.full((len(rows), 6), -7, "int64")
        for b, kinds in enumerate(kinds_per_row):
            clock = 0
            for j, kind in enumerate(kinds):
                if kind:
                    clock += kind
                    items[b, j], orders[b, j] = 10 * b + j + 1, clock
        return items, orders

    inputs = (*side([r[0] for r in rows]), *side([r[1] for r in rows]))
    want = mixed_sequence_reference(*inputs, 5, ratio, mode)
    got = to_numpy(MixedPolaritySequence(5, ratio, mode=mode)(*inputs))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
