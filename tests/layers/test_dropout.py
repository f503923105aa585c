"""`CounterDropout`: the keep mask against a numpy MurmurHash3 finalizer written from
its definition (uint32 arithmetic), eager, compiled and under JAX; the layer's
inverted-dropout contract, keep rate, independence between calls and neighbours,
dynamic shapes, seeding and serialization."""

from __future__ import annotations

import textwrap

import keras
import numpy as np
import pytest

from tests.helpers import run_under_jax, xla_call
from tfnegseq.layers import CounterDropout
from tfnegseq.layers.dropout import keep_mask


def fmix32_reference(h):
    h = h.astype(np.uint64) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def keep_reference(shape, key, rate):
    """Element i kept iff the top 24 bits of fmix(fmix(i * 0x9e3779b1 + k0) ^ k1) >=
    round(rate * 2^24); keys as uint32 (their int32 bit patterns)."""
    k0, k1 = (int(np.uint32(np.int32(k))) for k in key)
    index = np.arange(int(np.prod(shape)), dtype=np.uint64)
    h = fmix32_reference((index * 0x9E3779B1 + k0) & 0xFFFFFFFF)
    h = fmix32_reference(h ^ k1)
    return ((h >> 8) >= round(rate * 2**24)).reshape(shape)


KEYS = [(0, 0), (12345, -7), (-(2**31), 2**31 - 1)]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("rate", [0.5, 0.1, 0.9])
def test_keep_mask_matches_the_numpy_hash(key, rate):
    shape = (3, 5, 7)
    want = keep_reference(shape, key, rate)
    key_t = keras.ops.convert_to_tensor(np.array(key, "int32"))
    got = keras.ops.convert_to_numpy(keep_mask(shape, key_t, rate))
    np.testing.assert_array_equal(got, want)
    compiled = keras.ops.convert_to_numpy(
        xla_call(keras.layers.Lambda(lambda k: keep_mask(shape, k, rate)), key_t))
    np.testing.assert_array_equal(compiled, want)


def test_keep_mask_under_a_dynamic_shape():
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function input signature")
    key = np.array([3, 4], "int32")
    fn = tf.function(lambda x, k: keep_mask(keras.ops.shape(x), k, 0.5),
                     input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([2], tf.int32)],
                     jit_compile=True)
    np.testing.assert_array_equal(fn(np.zeros((4, 6), "float32"), key).numpy(),
                                  keep_reference((4, 6), key, 0.5))


def test_inverted_dropout_contract():
    layer = CounterDropout(0.25, seed=1)
    x = np.random.default_rng(0).normal(size=(64, 128)).astype("float32") + 3.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)  # inference
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(CounterDropout(0.0)(x, training=True)), x)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)


@pytest.mark.parametrize("rate", [0.5, 0.2])
def test_keep_rate_and_independence(rate):
    """Over 2^20 elements: the kept fraction within 5 sigma of 1 - rate; two calls'
    masks and horizontally / vertically adjacent elements uncorrelated (|r| < 5 /
    sqrt(n))."""
    layer = CounterDropout(rate, seed=2)
    x = np.ones((1024, 1024), "float32")
    a = keras.ops.convert_to_numpy(layer(x, training=True)) != 0
    b = keras.ops.convert_to_numpy(layer(x, training=True)) != 0
    n, p = a.size, 1.0 - rate
    assert abs(a.mean() - p) < 5 * np.sqrt(p * (1 - p) / n), a.mean()
    bound = 5 / np.sqrt(n)
    for u, v in ((a, b), (a[:, :-1], a[:, 1:]), (a[:-1], a[1:])):
        r = np.corrcoef(u.ravel(), v.ravel())[0, 1]
        assert abs(r) < bound, r
    assert (a != b).any()


def test_seeded_layers_repeat_and_unseeded_differ():
    x = np.ones((32, 32), "float32")

    def masks(layer):
        return [keras.ops.convert_to_numpy(layer(x, training=True)) for _ in range(2)]

    first, second = masks(CounterDropout(0.5, seed=7)), masks(CounterDropout(0.5, seed=7))
    for u, v in zip(first, second, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(*masks(CounterDropout(0.5, seed=8))[:1], first[0])


def test_serialization_and_arguments():
    layer = CounterDropout(0.3, seed=4, name="drop")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, CounterDropout)
    assert (clone.rate, clone.seed, clone.name) == (0.3, 4, "drop")
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="`rate` must be a float in"):
            CounterDropout(bad)


def test_mixed_bfloat16_keeps_the_dtype():
    layer = CounterDropout(0.5, dtype="mixed_bfloat16")
    y = layer(np.ones((4, 4), "float32"), training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert set(np.unique(keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")))) <= {0.0, 2.0}


JAX_SCRIPT = textwrap.dedent(
    """
    import jax
    import keras
    import numpy as np

    assert keras.backend.backend() == "jax", keras.backend.backend()
    from tests.layers import test_dropout as t
    from tfnegseq.layers.dropout import keep_mask

    for key in t.KEYS:
        k = keras.ops.convert_to_tensor(np.array(key, "int32"))
        got = np.asarray(jax.jit(lambda k: keep_mask((3, 5, 7), k, 0.5))(k))
        np.testing.assert_array_equal(got, t.keep_reference((3, 5, 7), key, 0.5))
    y = keras.ops.convert_to_numpy(
        t.CounterDropout(0.5, seed=0)(np.ones((64, 64), "float32"), training=True))
    assert set(np.unique(y)) == {0.0, 2.0}
    print("JAX_DROPOUT_OK")
    """
)


def test_under_jax_backend():
    assert "JAX_DROPOUT_OK" in run_under_jax(JAX_SCRIPT).stdout
