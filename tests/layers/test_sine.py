"""Tests for tfnegseq.layers.sine (SINE, RecSys 2023, eq. 3-14).

Every expected value is a numpy transcription of the paper's equations (or of the
official code's variant where a mode follows it), written independently of the layers:
the attention references build the causal, padding-masked softmax and then re-weight
and renormalise it explicitly; the fusion reference concatenates `[e_i ; o_k]`.
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
from tfnegseq.layers import (
    AdaptiveFusion,
    SubInterestAssignment,
    SubInterestProjection,
    SubInterestSelfAttention,
)

B, L, D, K = 3, 6, 8, 3

# --------------------------------------------------------------------------------------
# Inputs and numpy references.


def sequence_inputs(rng, batch=B, length=L, dim=D, num_interests=K):
    """x `[B, L, d]`, a mask with left padding (0, 2 and 4 pads) and a hole, interests."""
    x = rng.normal(size=(batch, length, dim)).astype("float32")
    mask = np.ones((batch, length), bool)
    for b in range(batch):
        mask[b, : (2 * b) % length] = False
    mask[0, 2] = False  # a hole inside a row
    interests = rng.integers(0, num_interests, (batch, length)).astype("int32")
    return x, mask, interests


def randomize(layer, rng, scale=0.4):
    """Random weights everywhere (LayerNorm gamma around 1); returns them by name."""
    values = []
    for w in layer.weights:
        shape = tuple(w.shape)
        if w.path.endswith("gamma"):
            values.append(1.0 + 0.2 * rng.normal(size=shape))
        else:
            values.append(scale * rng.normal(size=shape))
    layer.set_weights([v.astype("float32") for v in values])


def block_weights(layer):
    n = keras.ops.convert_to_numpy
    return {
        "wq": n(layer.query_dense.kernel),  # [d, H, k]
        "wk": n(layer.key_dense.kernel),
        "wv": n(layer.value_dense.kernel),
        "wo": n(layer.output_dense.kernel),  # [H, k, d]
        "gamma": n(layer.attention_norm.gamma),
        "beta": n(layer.attention_norm.beta),
        "w1": n(layer.ffn_inner.kernel),
        "b1": n(layer.ffn_inner.bias),
        "w2": n(layer.ffn_outer.kernel),
        "b2": n(layer.ffn_outer.bias),
        "eps": layer.layer_norm_epsilon,
    }


def attention_weights_reference(x, mask, w):
    """alpha of eq. 7: causal softmax over real keys; rows of padded queries are 0."""
    x = x.astype(np.float64)
    q = np.einsum("bld,dhk->bhlk", x, w["wq"])
    k = np.einsum("bld,dhk->bhlk", x, w["wk"])
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])  # [B, H, L, L]
    length = x.shape[1]
    valid = np.tril(np.ones((length, length), bool))[None] & mask[:, None, :] & mask[:, :, None]
    alpha = np.zeros_like(logits)
    for b, h, i in np.ndindex(*logits.shape[:3]):
        keys = valid[b, i]
        if keys.any():
            e = np.exp(logits[b, h, i, keys] - logits[b, h, i, keys].max())
            alpha[b, h, i, keys] = e / e.sum()
    return alpha


def block_reference(x, mask, w, alpha_hat):
    """Eq. 10 given the final attention weights: Norm(alpha_hat V W^o + X), + FFN."""
    x = x.astype(np.float64)
    v = np.einsum("bld,dhk->bhlk", x, w["wv"])
    context = alpha_hat @ v  # [B, H, L, k]
    attended = np.einsum("bhlk,hkd->bld", context, w["wo"])
    h = attended + x
    mean = h.mean(-1, keepdims=True)
    var = ((h - mean) ** 2).mean(-1, keepdims=True)
    hidden = (h - mean) / np.sqrt(var + w["eps"]) * w["gamma"] + w["beta"]
    ffn = np.maximum(hidden @ w["w1"] + w["b1"], 0.0) @ w["w2"] + w["b2"]
    return np.where(mask[..., None], ffn + hidden, 0.0)


def sasrec_reference(x, mask, w):
    """A plain SASRec block (no sub-interest weighting) with the same weights."""
    return block_reference(x, mask, w, attention_weights_reference(x, mask, w))


def paper_beta_reference(alpha, interests, query_interests, beta_1):
    """Eq. 8-9, then renormalised over the keys (the layer's documented choice)."""
    match = query_interests[:, None, :, None] == interests[:, None, None, :]
    weighted = np.where(match, beta_1, 1.0 - beta_1) * alpha
    total = weighted.sum(-1, keepdims=True)
    return np.divide(weighted, total, out=np.zeros_like(weighted), where=total > 0)


def official_beta_reference(alpha, interests, query_interests, factor):
    """The official code: matching keys times `filter`, others times 1, no renorm."""
    match = query_interests[:, None, :, None] == interests[:, None, None, :]
    return alpha * np.where(match, factor, 1.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def attention_case(seed, **kwargs):
    rng = np.random.default_rng(seed)
    x, mask, interests = sequence_inputs(rng)
    layer = SubInterestSelfAttention(**{"num_heads": 2, "feed_forward_dim": 12, **kwargs})
    layer(x, mask)
    randomize(layer, rng)
    return layer, x, mask, interests, rng


# --------------------------------------------------------------------------------------
# SubInterestAssignment (eq. 3-5).


def test_assignment_by_hand():
    layer = SubInterestAssignment(2)
    layer.build((None, None, 2))
    layer.prototypes.assign(np.eye(2, dtype="float32"))
    pos = np.array([[[1.0, 0.8], [1.0, 0.8]]], "float32")
    neg = np.array([[[1.0, 0.0], [1.0, 0.0]]], "float32")
    got = to_numpy(layer(pos, neg, np.array([[1, 0]])))
    np.testing.assert_array_equal(got, [[1, 0]])  # the negative flips the first one only
    np.testing.assert_array_equal(to_numpy(layer(pos)), [[0, 0]])
    assert got.dtype == np.int32


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_assignment_matches_reference(call):
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(4, 7, D)).astype("float32")
    neg = rng.normal(size=(4, 7, D)).astype("float32")
    has = rng.random((4, 7)) < 0.6
    layer = SubInterestAssignment(5, prototypes_initializer="random_normal")
    layer(pos)
    z = to_numpy(layer.prototypes)
    assert z.shape == (5, D) and layer.prototypes.path.endswith("prototypes")
    with_neg = np.argmax(pos @ z.T - has[..., None] * (neg @ z.T), -1)
    np.testing.assert_array_equal(to_numpy(call(layer, pos, neg, has)), with_neg)
    np.testing.assert_array_equal(to_numpy(call(layer, pos)), np.argmax(pos @ z.T, -1))
    all_neg = np.argmax(pos @ z.T - neg @ z.T, -1)
    np.testing.assert_array_equal(to_numpy(layer(pos, neg)), all_neg)
    assert (with_neg != np.argmax(pos @ z.T, -1)).any()  # negatives mattered


# --------------------------------------------------------------------------------------
# SubInterestSelfAttention (eq. 6-10).


@pytest.mark.parametrize("num_heads", [1, 2])
def test_plain_block_matches_sasrec(num_heads):
    layer, x, mask, _, _ = attention_case(2, num_heads=num_heads)
    want = sasrec_reference(x, mask, block_weights(layer))
    np.testing.assert_allclose(to_numpy(layer(x, mask)), want, atol=2e-5)


@pytest.mark.parametrize("beta", [None, 0.8], ids=["learnt", "fixed"])
def test_paper_beta_matches_reference(beta):
    layer, x, mask, interests, rng = attention_case(3, beta=beta)
    beta_1 = 0.8
    if beta is None:
        layer.beta_logit.assign(1.1)
        beta_1 = sigmoid(1.1)
    w = block_weights(layer)
    alpha = attention_weights_reference(x, mask, w)
    query_interests = rng.integers(0, K, interests.shape).astype("int32")
    for queries in (None, query_interests):
        q = interests if queries is None else queries
        alpha_hat = paper_beta_reference(alpha, interests, q, beta_1)
        for training in (False, True):  # paper mode: the same in training and inference
            out, scores = to_numpy(
                layer(x, mask, interests, queries, training=training, return_attention_scores=True)
            )
            np.testing.assert_allclose(scores, alpha_hat, atol=1e-6)
            np.testing.assert_allclose(out, block_reference(x, mask, w, alpha_hat), atol=2e-5)
    plain = sasrec_reference(x, mask, w)
    assert not np.allclose(to_numpy(layer(x, mask, interests)), plain, atol=1e-3)


def test_official_beta_matches_reference():
    layer, x, mask, interests, rng = attention_case(4, beta_mode="official", beta=0.3)
    w = block_weights(layer)
    alpha = attention_weights_reference(x, mask, w)
    targets = rng.integers(0, K, interests.shape).astype("int32")
    weighted = official_beta_reference(alpha, interests, targets, 0.3)
    out, scores = to_numpy(
        layer(x, mask, interests, targets, training=True, return_attention_scores=True)
    )
    np.testing.assert_allclose(scores, weighted, atol=1e-6)
    np.testing.assert_allclose(out, block_reference(x, mask, w, weighted), atol=2e-5)
    # Inference: the official `predict` passes no weights, a plain SASRec block.
    inference = to_numpy(layer(x, mask, interests, targets, training=False))
    np.testing.assert_allclose(inference, sasrec_reference(x, mask, w), atol=2e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"beta": 0.9}, {"beta_mode": "official", "beta": 0.4}],
    ids=["paper-learnt", "paper-fixed", "official-inference"],
)
def test_one_sub_interest_is_sasrec(kwargs):
    """K = 1: every key matches; the renormalised paper weighting leaves alpha as it
    is, whatever beta (the official mode only at inference)."""
    layer, x, mask, _, rng = attention_case(5, **kwargs)
    if layer.beta_logit is not None:
        layer.beta_logit.assign(-2.3)
    assignment = SubInterestAssignment(1)
    interests = assignment(x, rng.normal(size=x.shape).astype("float32"), mask)
    np.testing.assert_array_equal(to_numpy(interests), np.zeros(mask.shape))
    want = sasrec_reference(x, mask, block_weights(layer))
    got = to_numpy(layer(x, mask, interests, training=False))
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("kwargs", [{}, {"beta_mode": "official", "beta": 0.3}])
def test_causality(kwargs):
    layer, x, mask, interests, rng = attention_case(6, **kwargs)
    mask = np.ones_like(mask)
    before = to_numpy(layer(x, mask, interests, training=True))
    for t in range(1, L):
        changed = x.copy()
        changed[:, t] += rng.normal(size=changed[:, t].shape).astype("float32")
        other = interests.copy()
        other[:, t] = (other[:, t] + 1) % K
        after = to_numpy(layer(changed, mask, other, training=True))
        np.testing.assert_array_equal(after[:, :t], before[:, :t])
        assert not np.allclose(after[:, t], before[:, t])


@pytest.mark.parametrize("kwargs", [{}, {"beta_mode": "official", "beta": 0.3}])
def test_padding_changes_nothing(kwargs):
    layer, x, mask, interests, rng = attention_case(7, **kwargs)
    out, scores = to_numpy(layer(x, mask, interests, training=True, return_attention_scores=True))
    assert np.isfinite(out).all() and np.isfinite(scores).all()
    key_padding = np.broadcast_to(~mask[:, None, None, :], scores.shape)
    assert (scores[key_padding] == 0).all()  # padded keys get exactly zero weight
    assert (scores[np.broadcast_to(~mask[:, None, :, None], scores.shape)] == 0).all()
    assert (out[~mask] == 0).all()  # padded queries output zeros
    real_rows = scores.sum(-1)[np.broadcast_to(mask[:, None, :], scores.shape[:3])]
    if not kwargs:
        np.testing.assert_allclose(real_rows, 1.0, atol=1e-6)
    garbage = np.where(mask[..., None], x, 50 * rng.normal(size=x.shape)).astype("float32")
    other = np.where(mask, interests, (interests + 1) % K)
    again = to_numpy(layer(garbage, mask, other, training=True))
    np.testing.assert_allclose(again, out, atol=1e-6)


def test_default_mask_dropout_and_shapes():
    layer, x, _, interests, _ = attention_case(8, dropout=0.5, key_dim=3)
    assert tuple(layer.query_dense.kernel.shape) == (D, 2, 3)
    assert tuple(layer.output_dense.kernel.shape) == (2, 3, D)
    assert tuple(layer.ffn_inner.kernel.shape) == (D, 12)
    assert layer.beta_logit.path.endswith("/beta_logit") and layer.beta_logit.shape == ()
    full = to_numpy(layer(x, np.ones(x.shape[:2], bool), interests))
    np.testing.assert_array_equal(to_numpy(layer(x, None, interests)), full)
    keras.utils.set_random_seed(0)
    assert not np.allclose(to_numpy(layer(x, None, interests, training=True)), full)
    fixed = SubInterestSelfAttention(2, beta=0.6)
    fixed(x)
    assert fixed.beta_logit is None and len(fixed.weights) == 4 + 2 + 4


requires_tf = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="uses tf.GradientTape"
)


@requires_tf
def test_learnt_beta_gets_gradient_only_with_mixed_interests():
    import tensorflow as tf

    layer, x, mask, interests, _ = attention_case(9)

    def grad(z_hat):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, mask, z_hat) ** 2)
        return float(tape.gradient(loss, layer.beta_logit.value))

    assert abs(grad(interests)) > 1e-4
    assert abs(grad(np.zeros_like(interests))) < 1e-5  # K = 1: beta cancels


# --------------------------------------------------------------------------------------
# SubInterestProjection (eq. 11) and AdaptiveFusion (eq. 12-14).


@pytest.mark.parametrize("shape", [(4, D), (4, 5, D)], ids=["user", "sequence"])
def test_projection(shape):
    rng = np.random.default_rng(10)
    o = rng.normal(size=shape).astype("float32")
    z = rng.normal(size=(K, D)).astype("float32")
    got = to_numpy(SubInterestProjection()(o, z))
    assert got.shape == shape[:-1] + (K, D)
    for k in range(K):
        np.testing.assert_allclose(got[..., k, :], o + sigmoid(o * z[k]) * o, atol=1e-6)


def fusion_reference(interests, items, kernel, bias, normalization):
    """Eq. 12-14 with the concatenation `[e_i ; o_k]`, for one item per user."""
    num = interests.shape[-2]
    dots = np.einsum("...kd,...d->...k", interests, items)
    if normalization == "mean":
        return dots.mean(-1)
    e = np.broadcast_to(items[..., None, :], interests.shape)
    logits = (np.concatenate([e, interests], -1) @ kernel)[..., 0] + bias[0]  # [..., K]
    if normalization == "softmax":
        y = np.exp(logits - logits.max(-1, keepdims=True))
    else:
        y = sigmoid(logits)
    y = y / y.sum(-1, keepdims=True)
    assert y.shape[-1] == num
    return (y * dots).sum(-1)


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
@pytest.mark.parametrize("normalization", ["ratio", "softmax", "mean"])
def test_fusion_matches_reference(normalization, call):
    rng = np.random.default_rng(11)
    interests = rng.normal(size=(4, K, D)).astype("float32")
    items = rng.normal(size=(4, D)).astype("float32")
    candidates = rng.normal(size=(4, 5, D)).astype("float32")
    layer = AdaptiveFusion(normalization)
    layer(interests, items)
    if normalization == "mean":
        assert layer.importance is None and not layer.weights
        kernel = bias = None
    else:
        randomize(layer, rng, scale=0.7)
        kernel, bias = to_numpy(layer.importance.kernel), to_numpy(layer.importance.bias)
        assert kernel.shape == (2 * D, 1)
    got = to_numpy(call(layer, interests, items))
    assert got.shape == (4,)
    np.testing.assert_allclose(
        got, fusion_reference(interests, items, kernel, bias, normalization), atol=1e-5
    )
    got = to_numpy(call(layer, interests, candidates))
    want = np.stack(
        [
            fusion_reference(interests, candidates[:, c], kernel, bias, normalization)
            for c in range(5)
        ],
        axis=1,
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    per_position = rng.normal(size=(2, 3, K, D)).astype("float32")  # [B, L, K, d]
    targets = rng.normal(size=(2, 3, D)).astype("float32")  # [B, L, d]
    np.testing.assert_allclose(
        to_numpy(call(layer, per_position, targets)),
        fusion_reference(per_position, targets, kernel, bias, normalization),
        atol=1e-5,
    )


@pytest.mark.parametrize("normalization", ["ratio", "softmax", "mean"])
def test_fusion_score_catalogue_matches_reference(normalization):
    """`score_catalogue`: every user against one shared table, eq. 12-14 per item."""
    rng = np.random.default_rng(13)
    interests = rng.normal(size=(3, K, D)).astype("float32")
    table = rng.normal(size=(7, D)).astype("float32")
    layer = AdaptiveFusion(normalization)
    layer(interests, table[:3])
    kernel = bias = None
    if normalization != "mean":
        randomize(layer, rng, scale=0.7)
        kernel, bias = to_numpy(layer.importance.kernel), to_numpy(layer.importance.bias)
    want = np.stack([fusion_reference(interests, np.broadcast_to(table[i], (3, D)), kernel,
                                      bias, normalization) for i in range(7)], axis=1)
    got = to_numpy(layer.score_catalogue(interests, table))
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_fusion_ratio_is_finite_where_every_sigmoid_underflows(call):
    """Eq. 13 with every logit near -150: float32 sigmoids are all 0 there (the plain
    ratio is 0 / 0 = NaN, as a MovieLens-100K run hit at epoch 230); the layer must
    give the ratio's value, computed here in float64 where the sigmoids do not
    underflow, and finite gradients."""
    import tensorflow as tf

    rng = np.random.default_rng(17)
    interests = rng.normal(size=(4, K, D)).astype("float32")
    items = rng.normal(size=(4, D)).astype("float32")
    layer = AdaptiveFusion("ratio")
    layer(interests, items)
    kernel = (0.5 * rng.normal(size=(2 * D, 1))).astype("float32")
    bias = np.array([-150.0], "float32")
    layer.importance.set_weights([kernel, bias])
    logits = (np.concatenate([np.broadcast_to(items[:, None], interests.shape), interests],
                             -1).astype(np.float64) @ kernel.astype(np.float64))[..., 0] - 150.0
    assert logits.max() < -120  # every float32 sigmoid underflows to 0
    want = fusion_reference(interests.astype(np.float64), items.astype(np.float64),
                            kernel.astype(np.float64), bias.astype(np.float64), "ratio")
    got = to_numpy(call(layer, interests, items))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    table = rng.normal(size=(6, D)).astype("float32")
    got = to_numpy(layer.score_catalogue(interests, table))
    assert np.all(np.isfinite(got))
    x = tf.constant(interests)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(layer(x, items))
    grads = tape.gradient(total, [x, *layer.trainable_weights])
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_fusion_ratio_gradient_is_finite_under_xla_near_minus_45():
    """Every logit near -46: the values are fine, but the plain ratio's XLA gradient is
    -inf there (its backward squares a sum of about 1e-20 and XLA flushes it to 0)."""
    import tensorflow as tf

    interests = np.zeros((2, K, D), "float32")
    items = np.zeros((2, D), "float32")
    layer = AdaptiveFusion("ratio")
    layer(interests, items)
    kernel = np.zeros((2 * D, 1), "float32")
    kernel[D:, 0] = 0.1  # interest term: 0.1 * sum(o_k)
    layer.importance.set_weights([kernel, np.array([-46.0], "float32")])
    x = tf.constant(np.random.default_rng(3).normal(scale=0.5, size=(2, K, D)), tf.float32)
    y = tf.constant(np.random.default_rng(4).normal(size=(2, D)), tf.float32)

    @tf.function(jit_compile=True)
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(layer(x, y))
        return tape.gradient(total, x)

    assert np.all(np.isfinite(grad(x).numpy()))


def test_fusion_kernel_order_is_item_first():
    """Only the item half of the kernel non-zero: the weights depend on e_i alone."""
    interests = np.random.default_rng(12).normal(size=(1, 2, 4)).astype("float32")
    layer = AdaptiveFusion("softmax")
    layer(interests, np.ones((1, 4), "float32"))
    kernel = np.zeros((8, 1), "float32")
    kernel[:4] = 5.0
    layer.importance.set_weights([kernel, np.zeros(1, "float32")])
    dots = interests[0] @ np.ones(4, "float32")
    np.testing.assert_allclose(
        to_numpy(layer(interests, np.ones((1, 4), "float32"))), [dots.mean()], atol=1e-6
    )


# --------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: SubInterestAssignment(0), "`num_interests` must be an integer >= 1"),
        (lambda: SubInterestSelfAttention(0), "`num_heads` must be an integer >= 1"),
        (
            lambda: SubInterestSelfAttention(1, key_dim=0),
            "`key_dim` must be None or an integer >= 1. Received: key_dim=0",
        ),
        (
            lambda: SubInterestSelfAttention(1, feed_forward_dim=2.5),
            "`feed_forward_dim` must be None or an integer >= 1",
        ),
        (
            lambda: SubInterestSelfAttention(1, dropout=1.0),
            r"`dropout` must be in \[0, 1\). Received: dropout=1.0",
        ),
        (lambda: SubInterestSelfAttention(1, beta_mode="x"), "`beta_mode` must be one of"),
        (
            lambda: SubInterestSelfAttention(1, beta=1.0),
            r"`beta` must be None or in \(0, 1\) in paper mode. Received: beta=1.0",
        ),
        (
            lambda: SubInterestSelfAttention(1, beta_mode="official"),
            "`beta` must be a float > 0 in official mode. Received: beta=None",
        ),
        (lambda: AdaptiveFusion("max"), "`normalization` must be one of"),
    ],
)
def test_validation(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_build_validation():
    with pytest.raises(ValueError, match="`num_heads` must divide the token dimension"):
        SubInterestSelfAttention(3)(np.zeros((1, 2, D), "float32"))
    SubInterestSelfAttention(3, key_dim=4)(np.zeros((1, 2, D), "float32"))  # fine
    with pytest.raises(ValueError, match="`items` must have the dimension of `interests`"):
        AdaptiveFusion()(np.zeros((1, K, D), "float32"), np.zeros((1, D + 1), "float32"))


# --------------------------------------------------------------------------------------
# Serialization.


@keras.saving.register_keras_serializable(package="tfnegseq_tests")
class TinySine(keras.Model):
    """Assignment -> sub-interest attention -> projection (shared Z) -> fusion."""

    def __init__(self, num_interests=K, normalization="softmax", **kwargs):
        super().__init__(**kwargs)
        self.num_interests = num_interests
        self.normalization = normalization
        self.assignment = SubInterestAssignment(num_interests, name="assignment")
        self.encoder = SubInterestSelfAttention(2, beta_mode="paper", name="encoder")
        self.projection = SubInterestProjection(name="projection")
        self.fusion = AdaptiveFusion(normalization, name="fusion")

    def call(self, inputs):
        x, negatives, negative_mask, mask, candidates = inputs
        interests = self.assignment(x, negatives, negative_mask)
        encoded = self.encoder(x, mask, interests)
        subs = self.projection(encoded[:, -1], self.assignment.prototypes)  # [B, K, d]
        return self.fusion(subs, candidates)

    def get_config(self):
        config = super().get_config()
        config.update({"num_interests": self.num_interests, "normalization": self.normalization})
        return config


def tiny_inputs(rng):
    x, mask, _ = sequence_inputs(rng)
    negatives = rng.normal(size=x.shape).astype("float32")
    return [x, negatives, rng.random(mask.shape) < 0.5, mask, rng.normal(size=(B, 4, D))]


def test_config_round_trips():
    for layer in (
        SubInterestAssignment(4, prototypes_initializer="he_normal", name="a"),
        SubInterestSelfAttention(
            2, key_dim=3, dropout=0.1, feed_forward_dim=5, beta=0.7, activation="gelu"
        ),
        SubInterestSelfAttention(1, beta_mode="official", beta=0.2, layer_norm_epsilon=1e-6),
        SubInterestProjection(name="p"),
        AdaptiveFusion("mean"),
        AdaptiveFusion("softmax", kernel_initializer="zeros"),
    ):
        assert_config_round_trip(layer)


def test_layers_save_and_load(tmp_path):
    rng = np.random.default_rng(13)
    x, mask, interests = sequence_inputs(rng)
    layer, *_ = attention_case(14, beta=None)
    layer.beta_logit.assign(0.9)
    assert_save_load_equal(layer, [x, mask, interests], tmp_path, ["float32", "bool", "int32"])
    assignment = SubInterestAssignment(K)
    has = (rng.random(mask.shape) < 0.5).astype("int32")
    assert_save_load_equal(
        assignment, [x, x[:, ::-1].copy(), has], tmp_path, ["float32", "float32", "int32"]
    )
    fusion = AdaptiveFusion()
    interests_k = rng.normal(size=(B, K, D)).astype("float32")
    fusion(interests_k, x[:, 0])
    randomize(fusion, rng)
    assert_save_load_equal(fusion, [interests_k, x[:, :4]], tmp_path, ["float32", "float32"])


def test_projection_saves_and_loads_as_itself(tmp_path):
    # the projection has no weights: its file must still rebuild a SubInterestProjection
    # (a model that creates it in __init__, as TinySine, never reads its saved config)
    rng = np.random.default_rng(16)
    o_in, z_in = keras.Input((D,)), keras.Input(batch_shape=(K, D))
    model = keras.Model([o_in, z_in], SubInterestProjection(name="projection")(o_in, z_in))
    o = rng.normal(size=(B, D)).astype("float32")
    z = rng.normal(size=(K, D)).astype("float32")
    model.save(tmp_path / "projection.keras")
    loaded = keras.saving.load_model(tmp_path / "projection.keras")
    assert type(loaded.get_layer("projection")) is SubInterestProjection
    got = to_numpy(loaded([o, z]))
    for k in range(K):  # eq. 11, element-wise
        np.testing.assert_allclose(got[:, k], o + sigmoid(o * z[k]) * o, atol=1e-6)


def test_model_save_and_load(tmp_path):
    rng = np.random.default_rng(15)
    inputs = tiny_inputs(rng)
    model = TinySine()
    model(inputs)
    # a learnt beta away from its initial 0 (beta_1 = beta_2 = 0.5 weighs nothing):
    # a file that lost it would load a model with other outputs
    model.encoder.beta_logit.assign(1.3)
    expected = to_numpy(model(inputs))
    assert expected.shape == (B, 4) and np.isfinite(expected).all()
    # One Z, owned by the assignment layer, read by the projection.
    assert [w.path.endswith("/prototypes") for w in model.weights].count(True) == 1
    model.save(tmp_path / "tiny.keras")
    loaded = keras.saving.load_model(tmp_path / "tiny.keras")
    np.testing.assert_array_equal(to_numpy(loaded(inputs)), expected)


# --------------------------------------------------------------------------------------
# XLA and mixed_bfloat16.


@pytest.mark.parametrize(
    "kwargs, training",
    [({}, False), ({"beta_mode": "official", "beta": 0.3}, True)],
    ids=["paper", "official-training"],
)
def test_attention_xla(kwargs, training):
    layer, x, mask, interests, _ = attention_case(16, **kwargs)
    want = to_numpy(layer(x, mask, interests, training=training))
    got = to_numpy(xla_call(layer, x, mask, interests, training=training))
    np.testing.assert_allclose(got, want, atol=1e-5)


def twin(layer, **config):
    """The same layer under `mixed_bfloat16`, with the same (float32) weights."""
    other = layer.__class__.from_config({**layer.get_config(), **config, "dtype": "mixed_bfloat16"})
    return other


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_mixed_bfloat16(call):
    rng = np.random.default_rng(17)
    x, mask, _ = sequence_inputs(rng)
    negatives = rng.normal(size=x.shape).astype("float32")
    has = rng.random(mask.shape) < 0.5

    assignment = SubInterestAssignment(K)
    want_interests = to_numpy(assignment(x, negatives, has))
    assignment_bf16 = twin(assignment)
    assignment_bf16(x, negatives, has)
    assignment_bf16.set_weights(assignment.get_weights())
    got_interests = to_numpy(call(assignment_bf16, x, negatives, has))
    z = to_numpy(assignment.prototypes)
    scores = np.sort(x @ z.T - has[..., None] * (negatives @ z.T), -1)
    clear = scores[..., -1] - scores[..., -2] > 0.1  # far from a tie
    np.testing.assert_array_equal(got_interests[clear], want_interests[clear])
    assert assignment_bf16.prototypes.dtype == "float32"

    layer, *_ = attention_case(18)
    layer.beta_logit.assign(0.8)
    want = to_numpy(layer(x, mask, want_interests))
    layer_bf16 = twin(layer)
    layer_bf16(x, mask)
    layer_bf16.set_weights(layer.get_weights())
    got = to_numpy(call(layer_bf16, x, mask, want_interests))
    assert str(got.dtype) == "bfloat16"
    got = got.astype("float32")
    assert np.isfinite(got).all() and (got[~mask] == 0).all()
    np.testing.assert_allclose(got, want, atol=0.1, rtol=0.05)

    subs = to_numpy(SubInterestProjection()(want[:, -1], z))
    subs_bf16 = to_numpy(call(SubInterestProjection(dtype="mixed_bfloat16"), got[:, -1], z))
    np.testing.assert_allclose(subs_bf16.astype("float32"), subs, atol=0.15, rtol=0.05)

    fusion = AdaptiveFusion()
    candidates = rng.normal(size=(B, 4, D)).astype("float32")
    scores_want = to_numpy(fusion(subs, candidates))
    fusion_bf16 = twin(fusion)
    fusion_bf16(subs, candidates)
    fusion_bf16.set_weights(fusion.get_weights())
    scores_got = to_numpy(call(fusion_bf16, subs, candidates)).astype("float32")
    assert np.isfinite(scores_got).all()
    np.testing.assert_allclose(scores_got, scores_want, atol=0.1, rtol=0.05)
