"""The lifelong-attention family (issue 14) against numpy brute forces."""

import keras
import numpy as np
import pytest

from tests.helpers import eager_call, to_numpy, xla_call
from tfnegseq.layers.lifelong import (
    ConsistentTopKAttention,
    HashRetrievalAttention,
    HashSamplingAttention,
    LifelongAttentionPyramid,
    MultiHeadTargetAttention,
    PyramidLevel,
    SoftSearchAttention,
)


def left_padded_mask(lengths, width):
    return np.array([[t >= width - n for t in range(width)] for n in lengths])


def weights_of(layer):
    return {w.path.split("/")[-2]: to_numpy(w) for w in layer.weights if w.trainable}


def mhta_reference(items, target, mask, w, num_heads):
    """Per head: softmax over real items of (q Wq)_h.(k Wk)_h / sqrt(d_h); concat; Wo."""
    a = w["query"].shape[1]
    dh = a // num_heads
    out = np.zeros((len(items), w["output"].shape[1]))
    for b in range(len(items)):
        real = np.flatnonzero(mask[b])
        if not len(real):
            continue
        q, k, v = target[b] @ w["query"], items[b, real] @ w["key"], items[b, real] @ w["value"]
        heads = []
        for h in range(num_heads):
            s = k[:, h * dh:(h + 1) * dh] @ q[h * dh:(h + 1) * dh] / np.sqrt(dh)
            p = np.exp(s - s.max())
            heads.append((p / p.sum()) @ v[:, h * dh:(h + 1) * dh])
        out[b] = np.concatenate(heads) @ w["output"]
    return out


@pytest.mark.parametrize("call", [eager_call, xla_call], ids=["eager", "xla"])
def test_multi_head_target_attention_matches_reference(call):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(3, 7, 5)).astype("float32")
    target = rng.normal(size=(3, 4)).astype("float32")
    mask = left_padded_mask([7, 2, 0], 7)
    layer = MultiHeadTargetAttention(6, num_heads=2, output_dim=3)
    noisy = np.where(mask[..., None], items, 40.0).astype("float32")
    got = to_numpy(call(layer, noisy, target, mask))
    want = mhta_reference(items, target, mask, weights_of(layer), 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not got[2].any() and np.isfinite(got).all()


def test_soft_search_retrieves_the_top_k_by_inner_product_and_attends_over_them():
    rng = np.random.default_rng(1)
    n, d, k = 30, 6, 5
    seq = rng.normal(size=(4, n, d)).astype("float32")
    target = rng.normal(size=(4, d)).astype("float32")
    mask = left_padded_mask([30, 12, 3, 0], n)  # user 2: fewer than k real items
    layer = SoftSearchAttention(top_k=k, attention_dim=8, num_heads=2)
    out = to_numpy(layer(seq, target, mask))
    w = weights_of(layer)
    scores = (seq @ w["gsu_items"]) @ (target @ w["gsu_target"])[:, :, None]
    scores = np.where(mask, scores[..., 0], -np.inf)
    indices, valid = (to_numpy(v) for v in layer.retrieve(seq, target, mask))
    for b in range(4):
        real = int(mask[b].sum())
        want = np.argsort(-scores[b], kind="stable")[:min(k, real)]
        np.testing.assert_array_equal(indices[b, :len(want)], want)
        assert valid[b].sum() == min(k, real)
        sel = indices[b][valid[b]]
        esu = {kk.replace("esu_", ""): v for kk, v in weights_of(layer.esu).items()}
        want_out = mhta_reference(seq[b:b + 1, sel], target[b:b + 1],
                                  np.ones((1, len(sel)), bool), esu, 2)
        np.testing.assert_allclose(out[b], want_out[0], rtol=1e-4, atol=1e-4)
    assert not out[3].any()  # no real item
    pooled = to_numpy(layer.gsu_pooled(seq, target, mask))
    np.testing.assert_allclose(pooled, np.einsum("bn,bnd->bd", np.where(mask, scores, 0), seq),
                               rtol=1e-4, atol=1e-4)


def test_soft_search_gradients_reach_only_the_selected_items():
    import tensorflow as tf

    rng = np.random.default_rng(2)
    seq = tf.constant(rng.normal(size=(2, 20, 4)).astype("float32"))
    target = rng.normal(size=(2, 4)).astype("float32")
    mask = left_padded_mask([20, 9], 20)
    layer = SoftSearchAttention(top_k=4, attention_dim=4, num_heads=1)
    with tf.GradientTape() as tape:
        tape.watch(seq)
        out = tf.reduce_sum(layer(seq, target, mask))
    grad = np.abs(tape.gradient(out, seq).numpy()).sum(-1)  # [B, N]
    indices = to_numpy(layer.retrieve(seq, target, mask)[0])
    for b in range(2):
        selected = np.zeros(20, bool)
        selected[indices[b]] = True
        assert (grad[b][~selected] == 0).all() and (grad[b][selected] > 0).all()


def test_eta_retrieves_by_hamming_distance_with_recency_ties():
    rng = np.random.default_rng(3)
    n, d, m, k = 40, 6, 8, 6  # 8 bits: many ties, the recency rule decides
    seq = rng.normal(size=(3, n, d)).astype("float32")
    target = rng.normal(size=(3, d)).astype("float32")
    mask = left_padded_mask([40, 17, 2], n)
    layer = HashRetrievalAttention(top_k=k, hash_bits=m, attention_dim=4, num_heads=1, seed=5)
    layer(seq, target, mask)
    r = to_numpy(layer.projection)
    assert not layer.projection.trainable
    bits_x, bits_q = (seq @ r) >= 0, (target @ r) >= 0
    hamming = (bits_x != bits_q[:, None, :]).sum(-1)  # XOR count
    indices, valid = (to_numpy(v) for v in layer.retrieve(seq, target, mask))
    out = to_numpy(layer(seq, target, mask))
    esu = {kk.replace("esu_", ""): v for kk, v in weights_of(layer.esu).items()}
    for b in range(3):
        real = np.flatnonzero(mask[b])
        order = real[np.lexsort((-real, hamming[b, real]))]  # nearest, then most recent
        want = order[:k]
        np.testing.assert_array_equal(indices[b, :len(want)], want)
        assert valid[b].sum() == len(want)
        # the ESU attends over exactly the retrieved items
        want_out = mhta_reference(seq[b:b + 1, want], target[b:b + 1],
                                  np.ones((1, len(want)), bool), esu, 1)
        np.testing.assert_allclose(out[b], want_out[0], rtol=1e-4, atol=1e-4)
    # the case exercises the tie-break: user 0's 40 items share at most 9 distances
    assert len(set(hamming[0].tolist())) < mask[0].sum()


def test_eta_projection_is_saved_and_hashes_are_stable(tmp_path):
    seq, tgt, m = keras.Input((12, 4)), keras.Input((4,)), keras.Input((12,), dtype="bool")
    out = HashRetrievalAttention(top_k=3, hash_bits=6, attention_dim=4, seed=1, name="eta")(
        seq, tgt, m)
    model = keras.Model([seq, tgt, m], out)
    rng = np.random.default_rng(4)
    args = [rng.normal(size=(2, 12, 4)).astype("float32"),
            rng.normal(size=(2, 4)).astype("float32"), left_padded_mask([12, 5], 12)]
    model.save(tmp_path / "e.keras")
    loaded = keras.saving.load_model(tmp_path / "e.keras")
    np.testing.assert_array_equal(to_numpy(loaded.get_layer("eta").projection),
                                  to_numpy(model.get_layer("eta").projection))
    np.testing.assert_allclose(to_numpy(loaded(args)), to_numpy(model(args)), atol=1e-5)
    with pytest.raises(ValueError, match="widths must match"):
        HashRetrievalAttention()(np.zeros((1, 3, 4), "float32"), np.zeros((1, 5), "float32"),
                                 np.ones((1, 3), bool))


@pytest.mark.parametrize("with_side", [False, True])
def test_twin_selects_per_head_and_its_esu_uses_the_same_logits(with_side):
    rng = np.random.default_rng(7)
    n, d, k, heads = 25, 6, 4, 2
    seq = rng.normal(size=(3, n, d)).astype("float32")
    target = rng.normal(size=(3, d)).astype("float32")
    side = rng.normal(size=(3, n, 2)).astype("float32") if with_side else None
    mask = left_padded_mask([25, 10, 0], n)
    layer = ConsistentTopKAttention(top_k=k, attention_dim=8, num_heads=heads, output_dim=3)
    out = to_numpy(layer(seq, target, mask, side) if with_side else layer(seq, target, mask))
    w = weights_of(layer)
    dh = 8 // heads
    q, keys, vals = target @ w["query"], seq @ w["key"], seq @ w["value"]
    bias = (side @ w["cross"])[..., 0] if with_side else np.zeros((3, n))
    indices = to_numpy(layer.retrieve(seq, target, mask, side)[0])
    for b in range(3):
        real = np.flatnonzero(mask[b])
        heads_out = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            alpha = keys[b, :, sl] @ q[b, sl] / np.sqrt(dh) + bias[b]  # [N]
            order = real[np.argsort(-alpha[real], kind="stable")][:k]
            np.testing.assert_array_equal(indices[b, h, :len(order)], order)
            if not len(order):
                heads_out.append(np.zeros(dh))
                continue
            a = np.exp(alpha[order] - alpha[order].max())  # softmax of the GSU logits
            heads_out.append((a / a.sum()) @ vals[b, order, sl])
        np.testing.assert_allclose(out[b], np.concatenate(heads_out) @ w["output"],
                                   rtol=1e-4, atol=1e-4)
    assert not out[2].any()


def test_sdim_buckets_and_aggregation_match_integer_arithmetic():
    rng = np.random.default_rng(8)
    n, d, m, tau = 30, 5, 6, 2
    seq = rng.normal(size=(3, n, d)).astype("float32")
    target = rng.normal(size=(3, d)).astype("float32")
    mask = left_padded_mask([30, 8, 0], n)
    for normalize in (True, False):
        layer = HashSamplingAttention(num_hashes=m, hash_bits=tau, normalize=normalize, seed=2)
        out = to_numpy(layer(seq, target, mask))
        r = to_numpy(layer.projection).reshape(d, m, tau)
        want = np.zeros((3, d))
        for b in range(3):
            per_hash = []
            for h in range(m):
                def bucket(v, h=h, r=r):
                    return sum(int(bit) << i for i, bit in enumerate((v @ r[:, h]) >= 0))
                qb = bucket(target[b])
                hits = [t for t in range(n) if mask[b, t] and bucket(seq[b, t]) == qb]
                total = seq[b, hits].sum(0) if hits else np.zeros(d)
                if normalize and np.linalg.norm(total) > 0:
                    total = total / np.linalg.norm(total)
                per_hash.append(total)
            want[b] = np.mean(per_hash, axis=0)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
        assert not out[2].any()


def test_sdim_gradient_is_finite_where_no_item_shares_the_targets_bucket():
    """A hash function whose bucket holds no item has a zero sum; L2-normalising it must
    not differentiate sqrt at 0 (0 * inf = nan: the ML-100K overall run trained SDIM to
    logloss nan)."""
    rng = np.random.default_rng(3)
    seq = rng.normal(size=(3, 12, 4)).astype("float32")
    target = rng.normal(size=(3, 4)).astype("float32")
    mask = left_padded_mask([12, 3, 0], 12)  # the last user has no real item at all
    layer = HashSamplingAttention(num_hashes=8, hash_bits=3, normalize=True, seed=1)
    layer(seq, target, mask)
    empty = ~to_numpy(layer.collisions(seq, target, mask)).any(axis=1)  # [B, m]
    assert empty[2].all() and empty[:2].any()  # the case under test occurs

    import tensorflow as tf  # the test's backend (conftest); the layer is keras.ops only

    x = tf.Variable(seq)

    def gradient():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, target, mask) ** 2)
        return tape.gradient(loss, x)

    grad = gradient().numpy()
    np.testing.assert_allclose(tf.function(gradient, jit_compile=True)().numpy(), grad,
                               rtol=1e-5, atol=1e-6)  # compiled as training compiles it
    assert np.isfinite(grad).all()
    assert np.abs(grad[0]).sum() > 0  # and the gradient still flows through real sums


def test_msia_hashes_the_raw_items_and_attends_over_their_tcn_outputs():
    """ETA and SDIM as MSIA's major attention retrieve by the hash of the *raw* items
    (the target's space) and read the TCN outputs: MSIA's output equals the layer called
    on the first layer's outputs with `retrieval_keys` = the raw items, and (ETA) the
    retrieved slots are the brute-force Hamming top-k of the raw items, not of the
    outputs."""
    from tfnegseq.layers.cain import MultiScopeInterestAggregator

    rng = np.random.default_rng(16)
    n, d, k = 16, 4, 4
    x = rng.normal(size=(2, n, d)).astype("float32")
    mask, target = left_padded_mask([16, 9], n), rng.normal(size=(2, d)).astype("float32")
    for major in (HashRetrievalAttention(top_k=k, hash_bits=16, attention_dim=4, seed=3),
                  HashSamplingAttention(num_hashes=6, hash_bits=2, seed=3)):
        msia = MultiScopeInterestAggregator(1, context_length=1, major_attention=major)
        out, (outputs, m) = msia(x, mask, target, return_first_layer=True)
        want = major(outputs, target, m, retrieval_keys=x)
        np.testing.assert_allclose(to_numpy(out), to_numpy(want), rtol=1e-5, atol=1e-6)
        if isinstance(major, HashRetrievalAttention):
            r = to_numpy(major.projection)
            hamming = (((x @ r) >= 0) != ((target @ r) >= 0)[:, None, :]).sum(-1)
            indices, _ = (to_numpy(v) for v in major.retrieve(x, target, mask))
            for b in range(2):
                real = np.flatnonzero(mask[b])
                order = real[np.lexsort((-real, hamming[b, real]))][:k]
                np.testing.assert_array_equal(indices[b, :len(order)], order)
            # and that differs from hashing the outputs (the old behaviour)
            assert not np.allclose(to_numpy(out), to_numpy(major(outputs, target, m)))


@pytest.mark.parametrize("cls", [SoftSearchAttention, HashRetrievalAttention,
                                 ConsistentTopKAttention, LifelongAttentionPyramid])
def test_as_msia_major_attention(cls):
    """A lifelong attention plugs into MSIA as its major attention, and serializes there."""
    from tfnegseq.layers.cain import MultiScopeInterestAggregator

    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 16, 4)).astype("float32")
    mask, target = left_padded_mask([16, 6], 16), rng.normal(size=(2, 4)).astype("float32")
    top_k = (8, 4) if cls is LifelongAttentionPyramid else 4
    msia = MultiScopeInterestAggregator(2, context_length=1, attention_dim=4,
                                        major_attention=cls(top_k=top_k, attention_dim=4))
    out = to_numpy(msia(x, mask, target))
    assert out.shape[0] == 2 and np.isfinite(out).all()
    clone = MultiScopeInterestAggregator.from_config(msia.get_config())
    assert type(clone.major) is cls


@pytest.mark.parametrize("make", [
    lambda: SoftSearchAttention(top_k=5, attention_dim=4),
    lambda: HashRetrievalAttention(top_k=5, hash_bits=8, attention_dim=4),
    lambda: ConsistentTopKAttention(top_k=5, attention_dim=4),
    lambda: HashSamplingAttention(num_hashes=4, hash_bits=2),
    lambda: LifelongAttentionPyramid(top_k=(6, 2), attention_dim=4),
], ids=["sim", "eta", "twin", "sdim", "lap"])
def test_xla_equals_eager_and_empty_users_are_zero(make):
    rng = np.random.default_rng(9)
    seq = rng.normal(size=(3, 12, 4)).astype("float32")
    target = rng.normal(size=(3, 4)).astype("float32")
    mask = left_padded_mask([12, 3, 0], 12)
    layer = make()
    want = to_numpy(eager_call(layer, seq, target, mask))
    np.testing.assert_allclose(to_numpy(xla_call(layer, seq, target, mask)), want,
                               rtol=1e-4, atol=1e-5)
    assert np.isfinite(want).all() and not want[2].any()


def test_twin_gradients_reach_only_selected_items():
    import tensorflow as tf

    rng = np.random.default_rng(10)
    seq = tf.constant(rng.normal(size=(1, 20, 4)).astype("float32"))
    target = rng.normal(size=(1, 4)).astype("float32")
    mask = np.ones((1, 20), bool)
    layer = ConsistentTopKAttention(top_k=3, attention_dim=4, num_heads=1)
    with tf.GradientTape() as tape:
        tape.watch(seq)
        out = tf.reduce_sum(layer(seq, target, mask))
    grad = np.abs(tape.gradient(out, seq).numpy()).sum(-1)[0]
    selected = np.zeros(20, bool)
    selected[to_numpy(layer.retrieve(seq, target, mask)[0])[0, 0]] = True
    assert (grad[~selected] == 0).all() and (grad[selected] > 0).all()


def test_lap_levels_nest_and_match_a_brute_force():
    rng = np.random.default_rng(11)
    n, d, k1, k2 = 30, 5, 8, 3
    seq = rng.normal(size=(3, n, d)).astype("float32")
    target = rng.normal(size=(3, d)).astype("float32")
    mask = left_padded_mask([30, 6, 0], n)  # user 1: fewer than k1 real items
    layer = LifelongAttentionPyramid(top_k=(k1, k2), attention_dim=4, num_heads=2)
    out = to_numpy(layer(seq, target, mask))
    assert out.shape == (3, 12)
    (i1, v1), (i2, v2) = ((to_numpy(a), to_numpy(b)) for a, b in layer.retrieve(seq, target, mask))
    lv = [{k: v for k, v in weights_of(level).items()} for level in layer.levels]
    focus = weights_of(layer.focus)
    for b in range(3):
        real = np.flatnonzero(mask[b])
        s1 = (seq[b] @ lv[0]["key"]) @ (target[b] @ lv[0]["query"]) / 2.0
        top1 = real[np.argsort(-s1[real], kind="stable")][:k1]
        np.testing.assert_array_equal(i1[b, :len(top1)], top1)
        s2 = (seq[b] @ lv[1]["key"]) @ (target[b] @ lv[1]["query"]) / 2.0
        top2 = top1[np.argsort(-s2[top1], kind="stable")][:k2]
        np.testing.assert_array_equal(i2[b, :len(top2)], top2)
        assert set(i2[b][v2[b]]) <= set(i1[b][v1[b]])  # S2 within S1
        want = np.concatenate([
            mhta_reference(seq[b:b + 1, real], target[b:b + 1], np.ones((1, len(real)), bool),
                           lv[0], 1)[0],
            mhta_reference(seq[b:b + 1, top1], target[b:b + 1], np.ones((1, len(top1)), bool),
                           lv[1], 1)[0],
            mhta_reference(seq[b:b + 1, top2], target[b:b + 1], np.ones((1, len(top2)), bool),
                           focus, 2)[0],
        ]) if len(real) else np.zeros(12)
        np.testing.assert_allclose(out[b], want, rtol=1e-4, atol=1e-4)


def test_lap_gives_every_real_item_a_gradient():
    import tensorflow as tf

    rng = np.random.default_rng(12)
    seq = tf.constant(rng.normal(size=(1, 20, 4)).astype("float32"))
    target = rng.normal(size=(1, 4)).astype("float32")
    mask = left_padded_mask([15], 20)
    layer = LifelongAttentionPyramid(top_k=(6, 2), attention_dim=4)
    with tf.GradientTape() as tape:
        tape.watch(seq)
        out = tf.reduce_sum(layer(seq, target, mask))
    grad = np.abs(tape.gradient(out, seq).numpy()).sum(-1)[0]
    assert (grad[mask[0]] > 0).all() and (grad[~mask[0]] == 0).all()
    with pytest.raises(ValueError, match="top_k"):
        LifelongAttentionPyramid(top_k=(2, 6))


@pytest.mark.parametrize("make", [
    lambda dtype: MultiHeadTargetAttention(4, dtype=dtype),
    lambda dtype: SoftSearchAttention(top_k=5, attention_dim=4, dtype=dtype),
    lambda dtype: HashRetrievalAttention(top_k=5, hash_bits=8, attention_dim=4, dtype=dtype),
    lambda dtype: ConsistentTopKAttention(top_k=5, attention_dim=4, dtype=dtype),
    lambda dtype: HashSamplingAttention(num_hashes=4, hash_bits=2, dtype=dtype),
    lambda dtype: LifelongAttentionPyramid(top_k=(6, 2), attention_dim=4, dtype=dtype),
], ids=["mhta", "sim", "eta", "twin", "sdim", "lap"])
def test_mixed_bfloat16(make):
    """Under mixed_bfloat16 (weights float32, compute bfloat16) every layer runs, with
    the float32 layer's weights, to a finite bfloat16 output near the float32 one (MHTA,
    SDIM: no selection that rounding could change) or of the same shape."""
    rng = np.random.default_rng(12)
    seq = rng.normal(size=(3, 12, 4)).astype("float32")
    target = rng.normal(size=(3, 4)).astype("float32")
    mask = left_padded_mask([12, 3, 0], 12)
    full, half = make("float32"), make("mixed_bfloat16")
    want = to_numpy(full(seq, target, mask))
    half(seq, target, mask)
    half.set_weights(full.get_weights())
    got = half(seq, target, mask)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    got = to_numpy(got).astype("float32")
    assert got.shape == want.shape and np.isfinite(got).all() and not got[2].any()
    if isinstance(full, (MultiHeadTargetAttention, HashSamplingAttention)):
        np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05)
        return
    # the retrieval layers: rounding may change a near-tied selection, so the values are
    # compared for the users whose retrieved items are the float32 layer's
    def selections(layer):
        picked = layer.retrieve(seq, target, mask)
        levels = picked if isinstance(layer, LifelongAttentionPyramid) else [picked]
        return [(to_numpy(i), to_numpy(v)) for i, v, *_ in levels]

    same = [b for b in range(2) if all(
        np.array_equal(np.where(vf[b], i_f[b], -1), np.where(vh[b], ih[b], -1))
        for (i_f, vf), (ih, vh) in zip(selections(full), selections(half), strict=True))]
    assert same, "no user kept its float32 selection: nothing compared"
    np.testing.assert_allclose(got[same], want[same], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("make, side", [
    (lambda: MultiHeadTargetAttention(6, num_heads=3, output_dim=5), False),
    (lambda: SoftSearchAttention(top_k=3, attention_dim=6, num_heads=3), False),
    (lambda: HashRetrievalAttention(top_k=3, hash_bits=7, attention_dim=4, num_heads=1,
                                    seed=3), False),
    (lambda: ConsistentTopKAttention(top_k=3, attention_dim=4, num_heads=2, output_dim=3),
     True),
    (lambda: HashSamplingAttention(num_hashes=5, hash_bits=2, normalize=False, seed=3), False),
    (lambda: LifelongAttentionPyramid(top_k=(6, 2), attention_dim=4, num_heads=1), False),
    (lambda: PyramidLevel(attention_dim=6), False),
], ids=["mhta", "sim", "eta", "twin", "sdim", "lap", "pyramid_level"])
def test_every_layer_saves_and_loads(make, side, tmp_path):
    """Each registered lifelong layer, with arguments off their defaults and its
    trainable weights randomised, in a functional model saved as `.keras`: the loaded
    layer has the same config and non-trainable weights (the hash projections) and
    gives the same outputs."""
    rng = np.random.default_rng(17)
    n, d = 10, 4
    inputs = [keras.Input((n, d)), keras.Input((d,)), keras.Input((n,), dtype="bool")]
    args = [rng.normal(size=(2, n, d)).astype("float32"),
            rng.normal(size=(2, d)).astype("float32"), left_padded_mask([10, 4], n)]
    if side:
        inputs.append(keras.Input((n, 2)))
        args.append(rng.normal(size=(2, n, 2)).astype("float32"))
    layer = make()
    model = keras.Model(inputs, layer(*inputs))
    for w in layer.trainable_weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    twin = loaded.get_layer(layer.name)
    assert type(twin) is type(layer) and twin.get_config() == layer.get_config()
    for a, b in zip(layer.non_trainable_weights, twin.non_trainable_weights, strict=True):
        np.testing.assert_array_equal(to_numpy(b), to_numpy(a))
    want = to_numpy(model(args))
    assert np.abs(want).max() > 0
    np.testing.assert_array_equal(to_numpy(loaded(args)), want)
