"""Tests for tfnegseq.layers.polarity: mixed-polarity sequences, PBE (eq. 2), TAPF (eq. 3-5).

The `*_reference` functions are numpy transcriptions of the paper and the `check_*`
functions are backend-agnostic; `test_jax_backend.py` runs them under JAX too.
"""

from __future__ import annotations

import fractions
import json
import math

import keras
import numpy as np
import pytest

from tfnegseq.layers.polarity import (
    MixedPolaritySequence,
    PolarityBiasEmbedding,
    TargetAwarePolarityFusion,
)

# --------------------------------------------------------------------------------------
# Shared helpers (also imported by the other layer tests).


def eager_call(layer, *args, **kwargs):
    return layer(*args, **kwargs)


def xla_call(layer, *args, **kwargs):
    """Calls `layer` inside an XLA-compiled function of the current backend."""
    if keras.backend.backend() == "jax":
        import jax

        def fn(trainable, non_trainable, *inputs):
            outputs, _ = layer.stateless_call(trainable, non_trainable, *inputs, **kwargs)
            return outputs

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        return jax.jit(fn)(trainable, non_trainable, *args)
    import tensorflow as tf

    return tf.function(lambda *inputs: layer(*inputs, **kwargs), jit_compile=True)(*args)


def to_numpy(outputs):
    return keras.tree.map_structure(lambda x: keras.ops.convert_to_numpy(x), outputs)


def assert_config_round_trip(layer):
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(layer)
    assert json.dumps(keras.saving.serialize_keras_object(restored), sort_keys=True) == json.dumps(
        config, sort_keys=True
    )
    assert config["registered_name"].startswith("tfnegseq>")


def assert_save_load_equal(layer, inputs, tmp_path, input_dtypes):
    """Wraps `layer` in a functional model, saves `.keras`, loads, compares outputs."""
    symbolic = [
        keras.Input(shape=x.shape[1:], dtype=dtype, batch_size=None)
        for x, dtype in zip(inputs, input_dtypes, strict=True)
    ]
    model = keras.Model(symbolic, layer(*symbolic))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    expected, actual = to_numpy(model(inputs)), to_numpy(loaded(inputs))
    for want, got in zip(keras.tree.flatten(expected), keras.tree.flatten(actual), strict=True):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------
# Mixed-polarity sequence (§3.3).


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


def random_histories(rng, batch, max_history, max_order=30, dtype="int64"):
    """Left-padded positive and negative histories; orders drawn from one small pool,
    so ties between a positive and a negative happen."""

    def one_side():
        items = np.zeros((batch, max_history), dtype)
        orders = np.zeros((batch, max_history), dtype)
        for b in range(batch):
            n = (0, max_history)[b] if b < 2 else int(rng.integers(0, max_history + 1))
            items[b, max_history - n :] = rng.integers(1, 1000, n)
            orders[b, max_history - n :] = np.sort(rng.choice(np.arange(1, max_order), n, False))
        return items, orders

    return (*one_side(), *one_side())


def check_mixed_sequence(mode, ratio, length, seed=0, call=eager_call, dtype=None):
    rng = np.random.default_rng(seed)
    inputs = random_histories(rng, batch=16, max_history=7)
    layer = MixedPolaritySequence(length, ratio, mode=mode, dtype=dtype)
    items, polarity = to_numpy(call(layer, *inputs))
    want_items, want_polarity = mixed_sequence_reference(*inputs, length, ratio, mode)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_array_equal(polarity, want_polarity)
    # int64 ids stay int64 (JAX without x64 turns every int64 input into int32).
    assert polarity.dtype == np.int32
    assert items.dtype == to_numpy(keras.ops.convert_to_tensor(inputs[0])).dtype


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


@pytest.mark.parametrize("ratio, length, num_pos, num_neg", [(0.29, 100, 29, 71), (0.55, 11, 6, 4)])
def test_mixed_sequence_budget_is_floor(ratio, length, num_pos, num_neg):
    layer = MixedPolaritySequence(length, ratio)
    assert (layer.num_positive, layer.num_negative) == (num_pos, num_neg)
    check_mixed_sequence("interleaved", ratio, length, seed=3)


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


def test_pbe_mixed_bfloat16():
    out = check_pbe(seed=5, dtype="mixed_bfloat16", atol=5e-2)
    assert np.isfinite(out).all()


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
    """eq. 3-5 written literally (with the concat of eq. 4); padding tokens unchanged."""
    use = {
        "use_polarity_embedding": True,
        "use_gating": True,
        "use_polarity_sign": True,
        "use_residual": True,
        "use_target_interaction": True,
        **switches,
    }
    h = tokens.astype("float64")
    x = h * target[:, None, :] if use["use_target_interaction"] else h
    w_int, b_int = weights["interaction"]
    e = relu(x @ w_int + b_int)  # eq. 3
    if use["use_gating"]:
        parts = [h, e]
        if use["use_polarity_embedding"]:
            parts.append(weights["polarity_embedding"][0][polarity + 1])
        w_g, b_g = weights["gate"]
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


def check_tapf(row, seed=0, call=eager_call, dtype=None, atol=1e-5, polarity_dim=None):
    rng = np.random.default_rng(seed)
    tokens, target, polarity = random_tokens(rng)
    layer = TargetAwarePolarityFusion(polarity_dim=polarity_dim, dtype=dtype, **TAPF_ROWS[row])
    layer(tokens, target, polarity)
    weights = set_random_weights(layer, rng)
    out = to_numpy(call(layer, tokens, target, polarity)).astype("float32")
    want = tapf_reference(tokens, target, polarity, weights, TAPF_ROWS[row])
    np.testing.assert_allclose(out, want, atol=atol, rtol=atol)
    return out


@pytest.mark.parametrize("row", sorted(TAPF_ROWS))
def test_tapf_matches_reference(row):
    check_tapf(row, seed=len(row))


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


def test_tapf_mixed_bfloat16():
    rng = np.random.default_rng(11)
    tokens, target, polarity = random_tokens(rng)
    layer = TargetAwarePolarityFusion(dtype="mixed_bfloat16")
    out = layer(tokens, target, polarity)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert layer.gate.kernel.dtype == "float32"
    check_tapf("full", seed=11, dtype="mixed_bfloat16", atol=6e-2)


# --------------------------------------------------------------------------------------
# Production sizes: the scatter / take_along_axis merge at L = 100 and TAPF on enough
# tokens for token_matmul's chunked path.


@pytest.mark.parametrize("mode", ["interleaved", "grouped"])
@pytest.mark.parametrize("ratio", [0.5, 0.3, 1.0, 0.0])
def test_mixed_sequence_matches_reference_at_length_100(mode, ratio):
    rng = np.random.default_rng(20)
    inputs = random_histories(rng, batch=48, max_history=120, max_order=400)
    for call in (eager_call, xla_call):
        layer = MixedPolaritySequence(100, ratio, mode=mode)
        items, polarity = to_numpy(call(layer, *inputs))
        want_items, want_polarity = mixed_sequence_reference(*inputs, 100, ratio, mode)
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
def test_mixed_sequence_empty_slots_inside_the_window(mode):
    """Empty slots (item 0) between real ones are skipped. The layer reads only the last
    floor(r L) / floor((1 - r) L) columns, so the reference gets those windows."""
    rng = np.random.default_rng(22)
    pos_item, pos_order, neg_item, neg_order = random_histories(rng, 32, 12, max_order=60)
    for items in (pos_item, neg_item):
        items[rng.random(items.shape) < 0.2] = 0
    window = 5  # floor(0.5 * 10)
    want = mixed_sequence_reference(pos_item[:, -window:], pos_order[:, -window:],
                                    neg_item[:, -window:], neg_order[:, -window:], 10, 0.5, mode)
    for call in (eager_call, xla_call):
        layer = MixedPolaritySequence(10, 0.5, mode=mode)
        got = to_numpy(call(layer, pos_item, pos_order, neg_item, neg_order))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
