"""CAIN's layers against numpy written from the paper's equations (issue 14)."""

import keras
import numpy as np
import pytest

from tests.helpers import eager_call, to_numpy, xla_call
from tests.helpers_attention import din_reference, set_random_weights
from tfnegseq.layers.cain import (
    AuxiliaryTargetAttention,
    MultiScopeInterestAggregator,
    PersonalizedExtractorGeneration,
    TemporalConvolution,
    receptive_field,
)


def centres(length, stride, anchor):
    """Output j's centre: j * s ("start"), or counted back from the last input, so that
    the last output sits on input N - 1 ("end")."""
    n_out = -(-length // stride)
    if anchor == "start":
        return [j * stride for j in range(n_out)]
    return [length - 1 - (n_out - 1 - j) * stride for j in range(n_out)]


def tcn_reference(x, mask, kernel, bias, context_length, stride, anchor="start"):
    """Eq. (5), index by index: y[b, j] = sum over k in [-cl, cl] of x~[b, c_j + k] @
    W[k + cl] + bias, x~ = x * mask inside [0, N), 0 outside, c_j from `centres`.
    `kernel` is [2cl+1, d, f] or per example [B, 2cl+1, d, f]."""
    batch, length, _ = x.shape
    n_out = -(-length // stride)
    f = kernel.shape[-1]
    y = np.zeros((batch, n_out, f))
    for b in range(batch):
        w = kernel[b] if kernel.ndim == 4 else kernel
        for j, centre in enumerate(centres(length, stride, anchor)):
            total = np.array(bias, np.float64)
            for k in range(-context_length, context_length + 1):
                t = centre + k
                if 0 <= t < length and mask[b, t]:
                    total = total + x[b, t] @ w[k + context_length]
            y[b, j] = total
    return y


def left_padded_mask(lengths, width):
    return np.array([[t >= width - n for t in range(width)] for n in lengths])


def randomize(layer, rng):
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
@pytest.mark.parametrize("anchor", ["start", "end"])
@pytest.mark.parametrize("context_length, stride", [(0, 1), (1, 1), (7, 1), (1, 4), (7, 4), (0, 4)])
def test_tcn_matches_reference(context_length, stride, anchor, call):
    rng = np.random.default_rng(context_length * 10 + stride)
    width, d, f = 11, 5, 3
    x = rng.normal(size=(4, width, d)).astype("float32")
    mask = left_padded_mask([11, 7, 1, 0], width)  # full, padded, one item, all padding
    x_noisy = np.where(mask[..., None], x, 9.0).astype("float32")  # padding holds junk
    layer = TemporalConvolution(f, context_length, stride, anchor=anchor)
    layer(x, mask)
    randomize(layer, rng)
    kernel, bias = to_numpy(layer.kernel), to_numpy(layer.bias)
    assert kernel.shape == (2 * context_length + 1, d, f) and bias.shape == (f,)
    got = to_numpy(call(layer, x_noisy, mask))
    want = tcn_reference(x, mask, kernel, bias, context_length, stride, anchor)
    assert got.shape == (4, -(-width // stride), f)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(layer.output_mask(mask),
                                  mask[:, centres(width, stride, anchor)])
    # per-example kernels (float32: the window matmul at stride 1, the blocked output
    # taps otherwise) at the same centres
    per_user = rng.normal(size=(4, *kernel.shape)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(layer(x_noisy, mask, filters=per_user)),
        tcn_reference(x, mask, per_user, bias, context_length, stride, anchor),
        rtol=1e-4, atol=1e-4)


def test_tcn_end_anchor_keeps_a_centre_on_the_newest_item():
    """N = 8, stride 4, taps (1, 10, 100) at (-1, 0, +1): "end" centres outputs on
    inputs 3 and 7 (the last), hand-worked. A left-padded user with 3 real items
    (slots 5-7) has no real centre under "start" (0 and 4) and one under "end" (7)."""
    x = np.arange(1, 9, dtype="float32").reshape(1, 8, 1)  # 1 .. 8
    layer = TemporalConvolution(1, 1, stride=4, anchor="end")
    layer(x)
    layer.set_weights([np.array([1.0, 10.0, 100.0], "float32").reshape(3, 1, 1),
                       np.zeros(1, "float32")])
    # output 0: x[2] + 10 x[3] + 100 x[4]; output 1: x[6] + 10 x[7] + 0 (end padding)
    np.testing.assert_allclose(to_numpy(layer(x))[0, :, 0],
                               [3 + 10 * 4 + 100 * 5, 7 + 10 * 8])
    mask = left_padded_mask([3], 8)
    assert layer.output_mask(mask).tolist() == [[False, True]]
    assert TemporalConvolution(1, 1, stride=4).output_mask(mask).tolist() == [[False, False]]


def test_tcn_ends_are_zero_padded_and_centres_are_j_times_stride():
    """A hand-worked case: d = f = 1, kernel taps (1, 10, 100) at offsets (-1, 0, +1),
    N = 8, stride 4: outputs centred on inputs 0 and 4."""
    layer = TemporalConvolution(1, 1, stride=4)
    x = np.arange(1, 9, dtype="float32").reshape(1, 8, 1)  # 1 .. 8
    layer(x)
    layer.set_weights([np.array([1.0, 10.0, 100.0], "float32").reshape(3, 1, 1),
                       np.zeros(1, "float32")])
    got = to_numpy(layer(x))[0, :, 0]
    # output 0: x[-1]=0 (end padding) + 10*x[0] + 100*x[1]; output 1: x[3] + 10 x[4] + 100 x[5]
    np.testing.assert_allclose(got, [10 * 1 + 100 * 2, 4 + 10 * 5 + 100 * 6])
    got_last = to_numpy(TemporalConvolution(1, 1, stride=4, kernel_initializer="ones")(
        x[:, :7]))[0, :, 0]  # N = 7: output 1 centred on 4 reads x[3..5]
    np.testing.assert_allclose(got_last, [1 + 2, 4 + 5 + 6])


def test_tcn_output_depends_only_on_its_window():
    """Perturb one input: exactly the outputs whose window [j*s - cl, j*s + cl] holds
    it move."""
    rng = np.random.default_rng(3)
    width, cl, s = 20, 2, 3
    layer = TemporalConvolution(4, cl, s)
    x = rng.normal(size=(1, width, 6)).astype("float32")
    base = to_numpy(layer(x))
    for t in range(width):
        bumped = x.copy()
        bumped[0, t] += 1.0
        moved = np.abs(to_numpy(layer(bumped)) - base).max(axis=-1)[0] > 1e-6
        want = [abs(j * s - t) <= cl for j in range(-(-width // s))]
        assert moved.tolist() == want, t


@pytest.mark.parametrize("s", [1, 2])
def test_tcn_per_example_filters_equal_single_example_calls(s):
    rng = np.random.default_rng(4)
    cl, d, f = 2, 5, 3
    x = rng.normal(size=(3, 9, d)).astype("float32")
    mask = left_padded_mask([9, 5, 2], 9)
    filters = rng.normal(size=(3, 2 * cl + 1, d, f)).astype("float32")
    layer = TemporalConvolution(f, cl, s, bias_initializer="ones")
    got = to_numpy(layer(x, mask, filters))
    for b in range(3):
        single = TemporalConvolution(f, cl, s, bias_initializer="ones")
        single(x[b:b + 1], mask[b:b + 1])
        single.set_weights([filters[b], to_numpy(layer.bias)])
        np.testing.assert_allclose(got[b:b + 1], to_numpy(single(x[b:b + 1], mask[b:b + 1])),
                                   rtol=1e-5, atol=1e-5)
    want = tcn_reference(x, mask, filters, to_numpy(layer.bias), cl, s)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    xla = to_numpy(xla_call(layer, x, mask, filters))
    np.testing.assert_allclose(xla, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride, dtype", [(1, "float32"), (3, "float32"),
                                           (1, "mixed_bfloat16")])
def test_tcn_per_example_filters_with_an_unknown_length(stride, dtype):
    """Traced with the length unknown (a serving signature's [None, None, d]): the
    blocked path's reshapes (half precision, or stride > 1) and the float32 window
    matmul take the length at run time."""
    import tensorflow as tf

    rng = np.random.default_rng(8)
    cl, d, f = 2, 4, 3
    layer = TemporalConvolution(f, cl, stride, use_kernel=False, dtype=dtype)
    layer(np.zeros((1, 5, d), "float32"), filters=np.zeros((1, 2 * cl + 1, d, f), "float32"))
    fn = tf.function(lambda x, m, w: layer(x, m, filters=w), input_signature=[
        tf.TensorSpec([None, None, d]), tf.TensorSpec([None, None], tf.bool),
        tf.TensorSpec([None, 2 * cl + 1, d, f])])
    rtol, atol = (1e-4, 1e-4) if dtype == "float32" else (0.05, 0.1)
    for width in (1, 6, 9):
        x = rng.normal(size=(2, width, d)).astype("float32")
        mask = left_padded_mask([width, max(width - 3, 0)], width)
        w = (rng.normal(size=(2, 2 * cl + 1, d, f)) * 0.3).astype("float32")
        np.testing.assert_allclose(
            tf.cast(fn(x, mask, w), tf.float32).numpy(),
            tcn_reference(x, mask, w, np.zeros(f), cl, stride), rtol=rtol, atol=atol)


def test_tcn_mixed_bfloat16():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 12, 8)).astype("float32")
    mask = left_padded_mask([12, 6], 12)
    layer = TemporalConvolution(4, 3, 2, dtype="mixed_bfloat16")
    out = layer(x, mask)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    want = tcn_reference(x, mask, to_numpy(layer.kernel), to_numpy(layer.bias), 3, 2)
    np.testing.assert_allclose(to_numpy(out).astype("float32"), want, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_tcn_per_example_filters_mixed_bfloat16(call, s):
    # half precision takes the blocked output taps at every stride (float32 keeps the
    # window matmul at stride 1)
    rng = np.random.default_rng(6)
    cl, d, f = 3, 6, 4
    x = rng.normal(size=(3, 13, d)).astype("float32")
    mask = left_padded_mask([13, 7, 1], 13)
    filters = (rng.normal(size=(3, 2 * cl + 1, d, f)) * 0.3).astype("float32")
    layer = TemporalConvolution(f, cl, s, bias_initializer="ones", dtype="mixed_bfloat16")
    out = call(layer, x, mask, filters)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    want = tcn_reference(x, mask, filters, to_numpy(layer.bias), cl, s)
    np.testing.assert_allclose(to_numpy(out).astype("float32"), want, rtol=0.05, atol=0.1)


def test_tcn_serialization_round_trip(tmp_path):
    inputs = keras.Input((10, 6))
    mask = keras.Input((10,), dtype="bool")
    out = TemporalConvolution(4, 2, 3, activation="relu", name="tcn")(inputs, mask)
    model = keras.Model([inputs, mask], out)
    rng = np.random.default_rng(6)
    x, m = rng.normal(size=(2, 10, 6)).astype("float32"), left_padded_mask([10, 4], 10)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(to_numpy(loaded([x, m])), to_numpy(model([x, m])), atol=1e-6)
    config = loaded.get_layer("tcn").get_config()
    assert (config["filters"], config["context_length"], config["stride"]) == (4, 2, 3)
    assert config == model.get_layer("tcn").get_config()


def test_tcn_without_kernel_round_trips_with_its_anchor(tmp_path):
    # the non-default arguments (anchor "end", no kernel of its own: PEG's per-example
    # kernels come in as an input) must survive the file
    inputs, mask = keras.Input((9, 4)), keras.Input((9,), dtype="bool")
    kernels = keras.Input((5, 4, 3))  # [B, 2cl+1, d, f]
    layer = TemporalConvolution(3, 2, 4, use_kernel=False, anchor="end",
                                bias_initializer="ones", name="tcn")
    model = keras.Model([inputs, mask, kernels], layer(inputs, mask, kernels))
    rng = np.random.default_rng(7)
    x, m = rng.normal(size=(2, 9, 4)).astype("float32"), left_padded_mask([9, 5], 9)
    w = rng.normal(size=(2, 5, 4, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("tcn").get_config() == layer.get_config()
    assert loaded.get_layer("tcn").kernel is None
    np.testing.assert_allclose(to_numpy(loaded([x, m, w])),
                               tcn_reference(x, m, w, np.ones(3), 2, 4, "end"), atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"filters": 0, "context_length": 1}, "filters"),
    ({"filters": 4, "context_length": -1}, "context_length"),
    ({"filters": 4, "context_length": 1, "stride": 0}, "stride"),
    ({"filters": 4.0, "context_length": 1}, "filters"),
])
def test_tcn_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TemporalConvolution(**kwargs)


@pytest.mark.parametrize("anchor", ["start", "end"])
@pytest.mark.parametrize("cls, strides", [([7, 7], [1, 1]), ([7, 7, 7, 7], [1, 4, 4, 4]),
                                           ([1, 2, 1], [2, 3, 1]), ([0, 1], [4, 1])])
def test_receptive_field_of_stacked_layers(cls, strides, anchor):
    """Stack TCN layers (tanh between: strictly monotone, so no change is hidden, unlike
    an inactive ReLU), perturb each input: the last layer's outputs that move are
    exactly those in the dependency set propagated through the layers' windows, and,
    with dense windows (cl > 0 everywhere), exactly those whose centre in input
    coordinates is within the formula's one-sided context c_n of the input."""
    rng = np.random.default_rng(sum(cls) + sum(strides))
    width = 160
    layers = [TemporalConvolution(3, cl, s, activation="tanh" if n < len(cls) - 1 else None,
                                  bias_initializer="ones", anchor=anchor)
              for n, (cl, s) in enumerate(zip(cls, strides, strict=True))]
    x = rng.normal(size=(1, width, 3)).astype("float32")

    def run(v):
        for layer in layers:
            v = layer(v)
        return to_numpy(v)

    base = run(x)
    jump, context, r = receptive_field(cls, strides)[-1]
    deps = [{t} for t in range(width)]  # dependency sets, propagated layer by layer
    where = list(range(width))  # each output's centre in input coordinates
    for cl, s in zip(cls, strides, strict=True):
        at = centres(len(deps), s, anchor)
        deps = [set().union(*(deps[c + k] for k in range(-cl, cl + 1) if 0 <= c + k < len(deps)))
                for c in at]
        where = [where[c] for c in at]
    assert r == 2 * context + 1
    assert (np.diff(where) == jump).all()  # the formula's jump
    for t in range(width):
        bumped = x.copy()
        bumped[0, t] += 3.0
        moved = np.abs(run(bumped) - base).max(axis=-1)[0] > 1e-6
        want = np.array([t in d for d in deps])
        np.testing.assert_array_equal(moved, want, err_msg=f"input {t}")
        if all(cl > 0 for cl in cls):  # windows without holes: the interval formula
            interval = np.array([abs(c - t) <= context for c in where])
            np.testing.assert_array_equal(want, interval, err_msg=f"input {t}")


def test_receptive_field_paper_defaults():
    # cl = 7 every layer, strides 1, 4, 4, 4 (docs/design/cain.md §2.3)
    assert receptive_field([7] * 4, [1, 4, 4, 4]) == [(1, 7, 15), (4, 14, 29), (16, 42, 85),
                                                      (64, 154, 309)]
    # eq. 7 with stride 1: r_n = r_{n-1} + fs - 1 = 15 + 14 (n - 1)
    assert [r for _, _, r in receptive_field([7] * 6, [1] * 6)] == [15, 29, 43, 57, 71, 85]
    with pytest.raises(ValueError, match="one stride per layer"):
        receptive_field([7, 7], [1])


def aux_reference(keys, query, mask, wq, wk, wv, normalization):
    """Eq. 8-9: sa_t = (q Wq).(k_t Wk)/sqrt(d_a); IR = sum_t a_t (k_t Wv) over real t."""
    d_a = wq.shape[1]
    out = np.zeros((len(keys), wv.shape[1]))
    for b in range(len(keys)):
        real = np.flatnonzero(mask[b])
        if not len(real):
            continue
        sa = np.array([(query[b] @ wq) @ (keys[b, t] @ wk) for t in real]) / np.sqrt(d_a)
        a = np.exp(sa - sa.max()) / np.exp(sa - sa.max()).sum() if normalization == "softmax" else sa
        out[b] = sum(a_t * (keys[b, t] @ wv) for a_t, t in zip(a, real, strict=True))
    return out


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
@pytest.mark.parametrize("normalization", ["softmax", "none"])
def test_auxiliary_attention_matches_reference(normalization, call):
    rng = np.random.default_rng(10)
    keys = rng.normal(size=(3, 6, 5)).astype("float32")
    query = rng.normal(size=(3, 4)).astype("float32")
    mask = left_padded_mask([6, 2, 0], 6)
    noisy = np.where(mask[..., None], keys, 50.0).astype("float32")
    layer = AuxiliaryTargetAttention(7, value_dim=3, score_normalization=normalization)
    layer(keys, query, mask)
    weights = {w.path.split("/")[-2]: to_numpy(w) for w in layer.weights}
    got = to_numpy(call(layer, noisy, query, mask))
    want = aux_reference(keys, query, mask, weights["query"], weights["key"], weights["value"],
                         normalization)
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not got[2].any()  # no real key: zeros


def test_auxiliary_attention_serialization_and_validation(tmp_path):
    keys, query = keras.Input((6, 5)), keras.Input((4,))
    out = AuxiliaryTargetAttention(7, score_normalization="none", name="aux")(keys, query)
    model = keras.Model([keys, query], out)
    rng = np.random.default_rng(11)
    k, q = rng.normal(size=(2, 6, 5)).astype("float32"), rng.normal(size=(2, 4)).astype("float32")
    model.save(tmp_path / "a.keras")
    loaded = keras.saving.load_model(tmp_path / "a.keras")
    np.testing.assert_allclose(to_numpy(loaded([k, q])), to_numpy(model([k, q])), atol=1e-5)
    with pytest.raises(ValueError, match="score_normalization"):
        AuxiliaryTargetAttention(4, score_normalization="sigmoid")


def msia_reference(layer, x, mask, target, din_weights, peg=None):
    """MSIA from the numpy references: eq. 5 per layer (ReLU between layers), the mask at
    each centre, DIN (`din_reference`) on layer 1, eq. 8-9 on the later layers."""
    interests, h, m = [], x.astype("float64"), mask
    for n, tcn in enumerate(layer.tcn):
        if n:
            h = np.maximum(h, 0.0)
        kernel = peg[n] if peg is not None and peg[n] is not None else to_numpy(tcn.kernel)
        h = tcn_reference(h, m, kernel, to_numpy(tcn.bias), tcn.context_length, tcn.stride,
                          tcn.anchor)
        m = m[:, centres(m.shape[1], tcn.stride, tcn.anchor)]
        if n == 0:
            interests.append(din_reference(h, target, m, din_weights, "sigmoid")[0])
        else:
            aux = layer.auxiliary[n - 1]
            w = {v.path.split("/")[-2]: to_numpy(v) for v in aux.weights}
            interests.append(aux_reference(h, target, m, w["query"], w["key"], w["value"],
                                           aux.score_normalization))
    return np.concatenate(interests, axis=-1)


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_msia_matches_reference(call):
    rng = np.random.default_rng(12)
    d, width = 4, 24
    x = (rng.normal(size=(3, width, d)) * 0.5).astype("float32")
    mask = left_padded_mask([24, 13, 3], width)
    target = rng.normal(size=(3, d)).astype("float32")
    from tfnegseq.layers.attention import DinAttention

    layer = MultiScopeInterestAggregator(3, context_length=[2, 1, 1], later_stride=2,
                                         attention_dim=5, value_dim=3,
                                         major_attention=DinAttention(units=(6,)))
    out = layer(x, mask, target)
    assert out.shape == (3, d + 2 * 3)
    assert [t.stride for t in layer.tcn] == [1, 2, 2]
    for tcn in layer.tcn:
        randomize(tcn, rng)
    for aux in layer.auxiliary:
        randomize(aux, rng)
    din_weights = set_random_weights(layer.major, rng)
    got = to_numpy(call(layer, x, mask, target))
    np.testing.assert_allclose(got, msia_reference(layer, x, mask, target, din_weights),
                               rtol=1e-3, atol=1e-3)
    # PEG on the later layers only (Table 4 "later"): per-user kernels replace theirs
    peg = [None] + [(rng.normal(size=(3, 3, d, d)) * 0.3).astype("float32") for _ in range(2)]
    got = to_numpy(layer(x, mask, target, peg))
    np.testing.assert_allclose(got, msia_reference(layer, x, mask, target, din_weights, peg),
                               rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="peg_filters"):
        layer(x, mask, target, peg[:2])


def test_msia_serialization_and_validation(tmp_path):
    seq, m, tgt = keras.Input((16, 4)), keras.Input((16,), dtype="bool"), keras.Input((4,))
    out = MultiScopeInterestAggregator(2, context_length=1, attention_dim=3, name="msia")(
        seq, m, tgt)
    model = keras.Model([seq, m, tgt], out)
    rng = np.random.default_rng(13)
    args = [rng.normal(size=(2, 16, 4)).astype("float32"), left_padded_mask([16, 5], 16),
            rng.normal(size=(2, 4)).astype("float32")]
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(to_numpy(loaded(args)), to_numpy(model(args)), atol=1e-5)
    config = loaded.get_layer("msia").get_config()
    assert config["strides"] == [1, 4] and config["major_attention"]["class_name"] == "DinAttention"
    with pytest.raises(ValueError, match="num_layers"):
        MultiScopeInterestAggregator(0)
    with pytest.raises(ValueError, match="entries"):
        MultiScopeInterestAggregator(3, strides=[1, 4])


# ---------------------------------------------------------------------- PEG


def peg_reference(profile, w1, b1, w2, b2, shape):
    """Eq. 10-11: O = ReLU(I W1 + b1); W^PC = reshape(O W2 + b2) to [B, K, d, f]."""
    hidden = np.maximum(profile @ w1 + b1, 0.0)
    return (hidden @ w2 + b2).reshape(len(profile), *shape)


def test_peg_matches_reference_and_feeds_the_tcn():
    rng = np.random.default_rng(7)
    shapes = [(3, 4, 5), (1, 5, 2)]
    profile = rng.normal(size=(3, 6)).astype("float32")
    peg = PersonalizedExtractorGeneration(shapes, units=8)
    peg(profile)
    for sub in (*peg.hidden, *peg.generate):
        sub.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5
                         for w in sub.get_weights()])
    got = [to_numpy(k) for k in peg(profile)]
    for n, shape in enumerate(shapes):
        w1, b1 = (to_numpy(w) for w in peg.hidden[n].weights)
        w2, b2 = (to_numpy(w) for w in peg.generate[n].weights)
        want = peg_reference(profile, w1, b1, w2, b2, shape)
        assert got[n].shape == (3, *shape)
        np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-5)
    # users with different profiles get different kernels
    assert not np.allclose(got[0][0], got[0][1])
    # eq. 12: the TCN with the generated kernels (bias kept) is eq. 5 with them
    x = rng.normal(size=(3, 7, 4)).astype("float32")
    mask = left_padded_mask([7, 3, 5], 7)
    tcn = TemporalConvolution(5, 1, 1, bias_initializer="ones")
    y = to_numpy(tcn(x, mask, peg(profile)[0]))
    np.testing.assert_allclose(y, tcn_reference(x, mask, got[0], np.ones(5), 1, 1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("profile_std", [1.0, 0.05])  # unit inputs; embedding rows
def test_peg_kernels_have_a_glorot_like_scale_at_initialisation(profile_std):
    """The generated kernels start at the spread of a Glorot kernel of the same TCN
    layer (the generator's bias is one; within 25%, and within 2x from unit-variance
    inputs, whose offset adds its own spread), also from profile embeddings of
    the model's scale (std 0.05), where a zero bias left them about 20x smaller; the
    users' kernels differ (the per-user offset)."""
    rng = np.random.default_rng(8)
    k, d, f = 15, 64, 64
    glorot = np.sqrt(2.0 / (k * d + k * f))  # std of glorot_uniform for a [k, d, f] kernel
    profile = (rng.normal(size=(16, 32)) * profile_std).astype("float32")
    kernels = to_numpy(PersonalizedExtractorGeneration([(k, d, f)], units=64)(profile)[0])
    # the offset adds its own spread: about 0.9 Glorot from unit-variance inputs
    upper = 1.25 if profile_std < 1 else 2.0
    assert 0.8 * glorot < kernels.std() < upper * glorot, (kernels.std(), glorot)
    assert np.abs(kernels[0] - kernels[1]).max() > 0
    zero_bias = to_numpy(PersonalizedExtractorGeneration(
        [(k, d, f)], units=64, bias_initializer="zeros")(profile)[0])
    if profile_std < 1:  # without the bias: the offset alone, far below Glorot
        assert zero_bias.std() < glorot / 5, (zero_bias.std(), glorot)


def test_peg_serialization_and_validation(tmp_path):
    inputs = keras.Input((6,))
    outs = PersonalizedExtractorGeneration([(3, 4, 2), (1, 2, 2)], units=5, name="peg")(inputs)
    model = keras.Model(inputs, outs)
    x = np.random.default_rng(9).normal(size=(2, 6)).astype("float32")
    model.save(tmp_path / "p.keras")
    loaded = keras.saving.load_model(tmp_path / "p.keras")
    for a, b in zip(loaded(x), model(x), strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)
    assert loaded.get_layer("peg").get_config()["kernel_shapes"] == [[3, 4, 2], [1, 2, 2]]
    for bad in ([], [(3, 4)], [(0, 4, 2)]):
        with pytest.raises(ValueError, match="kernel_shapes"):
            PersonalizedExtractorGeneration(bad)
    with pytest.raises(ValueError, match="units"):
        PersonalizedExtractorGeneration([(1, 2, 2)], units=0)


def test_tcn_under_jax():
    """The same checks under the JAX backend (eager and `jax.jit`)."""
    from tests.helpers import run_under_jax

    run_under_jax(
        "import keras; assert keras.backend.backend() == 'jax'\n"
        "from tests.helpers import eager_call, xla_call\n"
        "from tests.layers import test_cain as t\n"
        "for call in (eager_call, xla_call):\n"
        "    for cl, s, anchor in ((0, 1, 'start'), (7, 1, 'start'), (1, 4, 'start'),\n"
        "                          (1, 4, 'end'), (7, 4, 'end')):\n"
        "        t.test_tcn_matches_reference(cl, s, anchor, call)\n"
        "t.test_tcn_per_example_filters_equal_single_example_calls(1)\n"
        "t.test_tcn_per_example_filters_equal_single_example_calls(2)\n"
        "t.test_tcn_output_depends_only_on_its_window()\n"
        # CainModel's most_interacted count (a scatter-add) under jax.jit, here to
        # share this process's start-up
        "from tests.models import test_cain as m\n"
        "m.check_most_interacted_jit()\n")


def test_msia_and_peg_under_mixed_bfloat16():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(2, 16, 4)).astype("float32")
    mask, target = left_padded_mask([16, 5], 16), rng.normal(size=(2, 4)).astype("float32")
    profile = rng.normal(size=(2, 3)).astype("float32")
    peg = PersonalizedExtractorGeneration([(3, 4, 4), (3, 4, 4)], units=4,
                                          dtype="mixed_bfloat16")
    msia = MultiScopeInterestAggregator(2, context_length=1, attention_dim=4,
                                        dtype="mixed_bfloat16")
    full = MultiScopeInterestAggregator(2, context_length=1, attention_dim=4)
    want = to_numpy(full(x, mask, target))
    msia(x, mask, target)
    msia.set_weights(full.get_weights())
    out = msia(x, mask, target)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(to_numpy(out).astype("float32"), want, rtol=0.05, atol=0.05)
    # PEG's kernels in half precision against the float32 model with the same weights
    peg_full = PersonalizedExtractorGeneration([(3, 4, 4), (3, 4, 4)], units=4)
    want_peg = to_numpy(full(x, mask, target, peg_full(profile)))
    peg(profile)
    peg.set_weights(peg_full.get_weights())
    with_peg = to_numpy(msia(x, mask, target, peg(profile))).astype("float32")
    assert np.abs(want_peg - want).max() > 0.1  # the kernels matter here
    np.testing.assert_allclose(with_peg, want_peg, rtol=0.05, atol=0.05)


def test_context_self_attention_sees_the_order_and_ignores_padding(tmp_path):
    """With positions, swapping two real items changes the outputs at the other
    positions (attention alone is permutation-equivariant: each output would just move
    with its item); padding values change nothing and padded outputs are 0; the
    layer round-trips through keras.saving."""
    from tfnegseq.layers.cain import ContextSelfAttention

    rng = np.random.default_rng(21)
    x = rng.normal(size=(2, 6, 4)).astype("float32")
    mask = left_padded_mask([6, 4], 6)
    swapped = x.copy()
    swapped[:, [3, 4]] = x[:, [4, 3]]
    for positions in (False, True):
        layer = ContextSelfAttention(num_heads=2, positions=positions)
        base, moved = to_numpy(layer(x, mask)), to_numpy(layer(swapped, mask))
        others = [0, 1, 2, 5]
        if positions:
            assert np.abs(moved[0, others] - base[0, others]).max() > 1e-4
        else:  # a set: the same outputs, permuted with the items
            np.testing.assert_allclose(moved[0, others], base[0, others], atol=1e-5)
            np.testing.assert_allclose(moved[0, [4, 3]], base[0, [3, 4]], atol=1e-5)
    junk = np.where(mask[..., None], x, 7.0).astype("float32")
    out = to_numpy(layer(junk, mask))
    np.testing.assert_allclose(out, base, atol=1e-5)
    assert np.all(out[1, :2] == 0)
    inputs = [keras.Input((6, 4)), keras.Input((6,), dtype="bool")]
    model = keras.Model(inputs, layer(*inputs))
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(to_numpy(again([x, mask])), base, atol=1e-6)
    assert again.layers[-1].get_config()["positions"] is True
