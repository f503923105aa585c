"""Tests for tfnegseq.losses: BPR (SINE eq. 15), distance correlation, eq. 16.

References are numpy in float64, written from the equations: `-ln sigma(x)` for BPR
and the sample distance correlation from double-centred distance matrices (written as
the official SINE code's `dcor_custom` states it, with no epsilon).
"""

from __future__ import annotations

import json
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import run_under_jax
from tfnegseq.losses import bpr_loss, distance_correlation, sine_loss


def np_neg_log_sigmoid(x):
    """-ln sigma(x) = ln(1 + e^-x), in float64 (logaddexp keeps it exact for large |x|)."""
    return np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_dcor(x, y):
    """Sample distance correlation of two [d] vectors read as d scalar observations."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def centred(v):
        a = np.abs(v[:, None] - v[None, :])
        return a - a.mean(axis=0, keepdims=True) - a.mean(axis=1, keepdims=True) + a.mean()

    a, b = centred(x), centred(y)
    dcov2_xy, dcov2_xx, dcov2_yy = (a * b).mean(), (a * a).mean(), (b * b).mean()
    return np.sqrt(dcov2_xy) / np.sqrt(np.sqrt(dcov2_xx) * np.sqrt(dcov2_yy))


def np_dcor_loss(z):
    return sum(np_dcor(z[i], z[j]) for i in range(len(z)) for j in range(i + 1, len(z)))


def value_and_grad(fn, x):
    x = tf.Variable(np.asarray(x, np.float32))
    with tf.GradientTape() as tape:
        value = fn(x)
    return float(value), tape.gradient(value, x).numpy()


# --------------------------------------------------------------------------------------
# BPR, eq. (15).


def test_bpr_matches_equation_with_mask_and_reductions():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(5, 1)).astype(np.float32)
    neg = rng.normal(size=(5, 4)).astype(np.float32)
    mask = rng.random((5, 4)) < 0.6
    pairs = np_neg_log_sigmoid(pos - neg)  # [5, 4] by broadcasting
    assert float(bpr_loss(pos, neg, mask)) == pytest.approx(pairs[mask].mean(), rel=1e-6)
    assert float(bpr_loss(pos, neg, mask, "sum")) == pytest.approx(pairs[mask].sum(), rel=1e-6)
    none = keras.ops.convert_to_numpy(bpr_loss(pos, neg, mask, "none"))
    np.testing.assert_allclose(none, np.where(mask, pairs, 0.0), rtol=1e-6)
    assert float(bpr_loss(pos, neg)) == pytest.approx(pairs.mean(), rel=1e-6)
    assert float(bpr_loss(pos, neg, reduction="sum")) == pytest.approx(pairs.sum(), rel=1e-6)
    # A [5, 1] mask (per user) broadcasts too: the mean is over the 4 pairs of each kept user.
    rows = np.array([[True], [False], [True], [True], [False]])
    expected = pairs[rows[:, 0]].mean()
    assert float(bpr_loss(pos, neg, rows)) == pytest.approx(expected, rel=1e-6)


def test_bpr_hand_worked():
    # pairs: 2-1 = 1, 2-3 = -1, 0.5-0 = 0.5 (the 4th is masked); softplus(-x) of each:
    # ln(1+e^-1) = 0.31326, ln(1+e) = 1.31326, ln(1+e^-0.5) = 0.47408 -> mean 0.70020
    value = bpr_loss([[2.0], [0.5]], [[1.0, 3.0], [0.0, 9.0]], [[True, True], [True, False]])
    assert float(value) == pytest.approx((0.313262 + 1.313262 + 0.474077) / 3, abs=1e-5)


def test_bpr_is_stable_for_large_differences():
    diff = np.array([-500.0, -100.0, -20.0, 0.0, 20.0, 100.0, 500.0], np.float32)
    value, grad = value_and_grad(lambda d: bpr_loss(d, 0.0, reduction="sum"), diff)
    pairs = keras.ops.convert_to_numpy(bpr_loss(diff, 0.0, reduction="none"))
    np.testing.assert_allclose(pairs, np_neg_log_sigmoid(diff), rtol=1e-6, atol=1e-30)
    assert np.isfinite(value) and np.isfinite(grad).all()
    # d/dx softplus(-x) = -sigma(-x): -1 for very negative x, 0 for very positive x.
    np.testing.assert_allclose(grad, -1.0 / (1.0 + np.exp(diff.astype(np.float64))), atol=1e-6)


def test_bpr_all_masked_is_zero_and_padding_never_leaks():
    pos = np.array([[1.0], [np.inf]], np.float32)
    neg = np.array([[np.nan, 2.0], [np.inf, -np.inf]], np.float32)
    none_kept = np.zeros((2, 2), bool)
    value, grad = value_and_grad(lambda p: bpr_loss(p, neg, none_kept), pos)
    assert value == 0.0 and np.isfinite(grad).all()
    # Only the pair (1, 2) is real: padding holding inf / NaN changes nothing.
    mask = np.array([[False, True], [False, False]])
    value, grad = value_and_grad(lambda p: bpr_loss(p, neg, mask), pos)
    assert value == pytest.approx(np_neg_log_sigmoid(-1.0), rel=1e-6)
    np.testing.assert_allclose(grad, [[-1.0 / (1.0 + np.exp(-1.0))], [0.0]], rtol=1e-6)


def test_bpr_bfloat16_xla_and_float32_output():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(size=(8, 1)), rng.normal(size=(8, 3))
    mask = rng.random((8, 3)) < 0.7
    pos16, neg16 = tf.constant(pos, tf.bfloat16), tf.constant(neg, tf.bfloat16)
    expected = np_neg_log_sigmoid(pos16.numpy().astype(np.float64) - neg16.numpy())[mask].mean()
    eager = bpr_loss(pos16, neg16, mask)
    xla = tf.function(bpr_loss, jit_compile=True)(pos16, neg16, tf.constant(mask))
    assert eager.dtype == tf.float32 and xla.dtype == tf.float32
    assert float(eager) == pytest.approx(expected, rel=1e-6)
    assert float(xla) == pytest.approx(float(eager), rel=1e-6)


# --------------------------------------------------------------------------------------
# Distance correlation.


def test_distance_correlation_matches_definition():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(5, 16)).astype(np.float32)
    z[3] = z[0] ** 2 + 0.1 * z[3]  # a non-linear dependence among the pairs
    assert float(distance_correlation(z)) == pytest.approx(np_dcor_loss(z), rel=1e-4)
    # The value is invariant to a shift and a positive scale of every coordinate.
    assert float(distance_correlation(3.0 * z + 1.0)) == pytest.approx(np_dcor_loss(z), rel=1e-4)


@pytest.mark.parametrize("a, b", [(2.0, 1.0), (0.01, -5.0), (-3.0, 0.5)])
def test_distance_correlation_is_one_for_affine_pairs(a, b):
    # |a x_m + b - a x_n - b| = |a| |x_m - x_n|: the distance matrix only scales, so the
    # centred matrices are proportional and dCor = 1, for a negative slope too.
    x = np.random.default_rng(3).normal(size=12).astype(np.float32)
    assert float(distance_correlation(np.stack([x, a * x + b]))) == pytest.approx(1.0, abs=1e-5)


def test_distance_correlation_sanity():
    rng = np.random.default_rng(4)
    x = rng.normal(size=400)
    # Independent vectors: small (the sample dCor is biased upwards, O(d^-1/2)), while a
    # non-linear dependence that Pearson misses (corr(x, x^2) ~ 0) is clearly detected.
    independent = float(distance_correlation(np.stack([x, rng.normal(size=400)])))
    quadratic = float(distance_correlation(np.stack([x, x**2])))
    assert abs(np.corrcoef(x, x**2)[0, 1]) < 0.2
    assert independent < 0.15 < 0.4 < quadratic < 1.0
    # Every pair is in [0, 1]: the sum over K(K-1)/2 pairs is bounded by their number.
    z = rng.normal(size=(6, 10))
    assert 0.0 < float(distance_correlation(z)) < 15.0
    assert float(distance_correlation(z[:1])) == 0.0  # one prototype: no pairs


def test_distance_correlation_guards_give_finite_gradients():
    x = np.random.default_rng(5).normal(size=8)
    # Identical vectors: dCor = 1, finite gradient.
    value, grad = value_and_grad(distance_correlation, np.stack([x, x]))
    assert value == pytest.approx(1.0, abs=1e-6) and np.isfinite(grad).all()
    # A constant vector: dCor = 0 up to the sqrt(1e-8) = 1e-4 guard, finite gradient.
    value, grad = value_and_grad(distance_correlation, np.stack([x, np.full(8, 3.0)]))
    assert value == pytest.approx(1e-4, abs=1e-6) and np.isfinite(grad).all()
    # Zero-initialised prototypes: 3 pairs at the 1e-4 floor, zero gradient.
    value, grad = value_and_grad(distance_correlation, np.zeros((3, 5)))
    assert value == pytest.approx(3e-4, abs=1e-6) and (grad == 0.0).all()


def test_distance_correlation_gradient_matches_finite_differences():
    z = np.random.default_rng(6).normal(size=(3, 6))
    _, grad = value_and_grad(distance_correlation, z)
    h, numeric = 1e-5, np.zeros_like(z)
    for index in np.ndindex(z.shape):
        step = np.zeros_like(z)
        step[index] = h
        numeric[index] = (np_dcor_loss(z + step) - np_dcor_loss(z - step)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, atol=2e-3, rtol=2e-3)


def test_distance_correlation_bfloat16_and_xla():
    z = np.random.default_rng(7).normal(size=(4, 9))
    z16 = tf.constant(z, tf.bfloat16)
    expected = np_dcor_loss(z16.numpy().astype(np.float64))
    eager = distance_correlation(z16)
    xla = tf.function(distance_correlation, jit_compile=True)(z16)
    assert eager.dtype == tf.float32 and xla.dtype == tf.float32
    assert float(eager) == pytest.approx(expected, rel=1e-4)
    assert float(xla) == pytest.approx(float(eager), rel=1e-5)


# --------------------------------------------------------------------------------------
# Eq. (16) and validation.


def test_sine_loss_weights_the_terms():
    assert float(sine_loss(1.0, 2.0, 4.0)) == pytest.approx(7.0)
    assert float(sine_loss(1.0, 2.0, 4.0, lambdas=(0.5, 2.0, 0.25))) == pytest.approx(5.5)


@pytest.mark.parametrize(
    "fn, args, message",
    [
        (bpr_loss, ([1.0], [0.0], None, "max"), r"`reduction` must be one of \('mean', 'sum'"),
        (distance_correlation, (np.zeros(4),), r"`prototypes` must be a \[K, d\] matrix"),
        (sine_loss, (1.0, 1.0, 1.0, (1.0, 1.0)), "`lambdas` must hold three weights"),
    ],
)
def test_validation(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)


# --------------------------------------------------------------------------------------
# JAX (TensorFlow hidden): the same values, and finite gradients, under jax.jit.

JAX_RUNNER = textwrap.dedent(
    """
    import json, sys

    class NoTensorFlow:  # the GPU machine has no TensorFlow: the losses must not need it
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")

    sys.meta_path.insert(0, NoTensorFlow())
    import jax, jax.numpy as jnp, numpy as np
    from tfnegseq.losses import bpr_loss, distance_correlation
    args = json.loads(sys.argv[1])
    pos, neg, mask, z = (np.asarray(args[k], np.float32) for k in ("pos", "neg", "mask", "z"))
    bpr = jax.jit(lambda p, n, m: bpr_loss(p, n, m > 0))
    dcor = jax.jit(distance_correlation)
    dcor_grad = jax.jit(jax.grad(distance_correlation))
    grads = [dcor_grad(jnp.asarray(v, jnp.float32))
             for v in (np.zeros((3, 5)), np.stack([z[0], z[0]]), np.stack([z[0], np.ones(6)]))]
    grads.append(jax.jit(jax.grad(lambda p: bpr(p, neg, mask)))(pos))
    print(json.dumps({
        "bpr": float(bpr(pos, neg, mask)),
        "bpr_bf16": float(bpr(jnp.asarray(pos, jnp.bfloat16), jnp.asarray(neg, jnp.bfloat16), mask)),
        "dcor": float(dcor(z)),
        "finite": all(bool(jnp.isfinite(g).all()) for g in grads),
    }))
    """
)


def test_same_values_and_finite_gradients_under_jax():
    pytest.importorskip("jax")
    rng = np.random.default_rng(8)
    pos, neg = rng.normal(size=(4, 1)), rng.normal(size=(4, 3))
    neg[0, 0] = np.nan  # padding: masked out below
    mask = (rng.random((4, 3)) < 0.7) & ~np.isnan(neg)
    z = rng.normal(size=(3, 6))
    args = {
        "pos": pos.tolist(),
        "neg": np.nan_to_num(neg, nan=1e30).tolist(),
        "mask": mask.astype(int).tolist(),
        "z": z.tolist(),
    }
    result = run_under_jax(JAX_RUNNER, json.dumps(args), timeout=120)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    clean_neg = np.where(mask, neg, 0.0)
    assert out["bpr"] == pytest.approx(np_neg_log_sigmoid(pos - clean_neg)[mask].mean(), rel=1e-5)
    assert out["bpr_bf16"] == pytest.approx(out["bpr"], rel=2e-2)
    assert out["dcor"] == pytest.approx(np_dcor_loss(z), rel=1e-4)
    assert out["finite"]
