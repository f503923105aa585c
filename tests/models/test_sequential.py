"""Tests for tfnegseq.models.sequential (SINE, SASRec, SASRec-N, GRU4Rec, DIN).

Expected values are numpy computations written here from the definitions, never the
model's own outputs: dot products of the encoded states with the item table rows
(SASRec; the states are read through `model.encode`, checked by the layer tests), a
numpy GRU (Keras' `reset_after` form) over the embedded inputs, eq. 11-14 over the
last block's states (SINE), the literal DIN activation unit (`din_reference`) plus the
MLP head (DIN), eq. 15's BPR and the distance correlation from its definition, and the
full-ranking rank counted over explicit catalogue scores.
"""

from __future__ import annotations

import json
import textwrap

import keras
import numpy as np
import pytest

from tests.helpers import assert_config_round_trip, run_under_jax, to_numpy, xla_call
from tests.helpers_attention import din_reference
from tests.helpers_transformer import layer_norm
from tfnegseq.config import ConfigError
from tfnegseq.models import SequentialRecommender

ARCHS = ("sasrec", "sasrec_n", "sine", "gru4rec", "din")
NUM_ITEMS, CAT, B, L, D = 30, 3, 5, 6, 8  # rows 1-2: OOV buckets; 3..29: the catalogue
SMALL = {
    "embedding_dim": D,
    "max_length": L,
    "num_blocks": 2,
    "num_heads": 2,
    "dropout": 0.0,
    "num_interests": 3,
    "attention_units": [6, 5],
    "mlp_units": [7],
}
LAMBDAS = {"lambda_1": 0.7, "lambda_2": 0.4, "lambda_3": 0.3}


# --------------------------------------------------------------------------------------
# Batches and models.


def left_pad(rows, length=L):
    out = np.zeros((len(rows), length), "int64")
    for b, row in enumerate(rows):
        if len(row):
            out[b, length - len(row) :] = row
    return out


def train_batch(rng, lengths=(6, 4, 2, 1, 0)):
    """Left-padded users of the given lengths (the last one all padding); inputs may
    hold OOV rows; some positives have no passive negative."""
    real = left_pad([np.ones(n) for n in lengths]) > 0

    def draw(low, holes=0.0):
        ids = rng.integers(low, NUM_ITEMS, real.shape)
        return np.where(real & (rng.random(real.shape) >= holes), ids, 0)

    return {
        "inputs": draw(1),
        "input_negatives": draw(1, 0.3),
        "targets": draw(1),
        "target_negatives": draw(1, 0.3),
        "random_negatives": draw(CAT),
        "mask": real.astype("float32"),
    }


def eval_batch(rng):
    """Users: the target also in the inputs (blanked in `exclude`, as the dataset
    does); an OOV target; duplicates, padding and OOV rows in `exclude`; all padding."""
    inputs = left_pad([[5, 9, 7, 12, 9, 20], [4, 6, 8], [1, 11, 11, 2], [13, 25], []])
    target = np.array([12, 1, 17, 20, 8])
    exclude = np.where(inputs == target[:, None], 0, inputs)
    negatives = np.where(
        rng.random(inputs.shape) < 0.5, rng.integers(1, NUM_ITEMS, inputs.shape), 0
    )
    return {
        "inputs": inputs,
        "input_negatives": np.where(inputs > 0, negatives, 0),
        "target": target,
        "candidates": rng.integers(0, NUM_ITEMS, (B, 4)),
        "exclude": exclude,
    }


def randomize(model, rng, scale=0.4):
    """Random weights everywhere (LayerNorm gammas around 1)."""
    values = []
    for w in model.weights:
        noise = rng.normal(size=tuple(w.shape))
        values.append(1.0 + 0.2 * noise if w.path.endswith("gamma") else scale * noise)
    model.set_weights([v.astype("float32") for v in values])


def make_model(arch, seed=0, catalogue_start=CAT, **config):
    model = SequentialRecommender(
        NUM_ITEMS, {"architecture": arch, **SMALL, **config}, catalogue_start=catalogue_start
    )
    rng = np.random.default_rng(seed)
    batch = eval_batch(rng)
    model({k: keras.KerasTensor(v.shape, dtype=str(v.dtype)) for k, v in batch.items()})
    randomize(model, rng)  # the symbolic call built every weight
    return model


def n(x):
    return keras.ops.convert_to_numpy(x).astype("float64")


# --------------------------------------------------------------------------------------
# Numpy references.


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gru_reference(x, mask, kernel, recurrent, bias):
    """Keras GRU (reset_after, gates z, r, h): masked steps keep the state; returns the
    state after each step `[B, L, u]`, 0 at masked steps."""
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units))
    out = np.zeros((*x.shape[:2], units))
    for t in range(x.shape[1]):
        xi = x[:, t] @ kernel + bias[0]
        hi = h @ recurrent + bias[1]
        z = sigmoid(xi[:, :units] + hi[:, :units])
        r = sigmoid(xi[:, units : 2 * units] + hi[:, units : 2 * units])
        cand = np.tanh(xi[:, 2 * units :] + r * hi[:, 2 * units :])
        new = z * h + (1.0 - z) * cand
        h = np.where(mask[:, t, None], new, h)
        out[:, t] = np.where(mask[:, t, None], new, 0.0)
    return out


def fusion_reference(o_k, e, kernel, bias):
    """Eq. 12-14: r_k = sigmoid(W [e ; o_k] + b), Y = r / sum r, sum_k Y_k (o_k . e).
    `o_k` `[..., K, d]`, `e` `[..., d]`."""
    e_k = np.broadcast_to(e[..., None, :], o_k.shape)
    r = sigmoid(np.concatenate([e_k, o_k], -1) @ kernel[:, 0] + bias[0])  # [..., K]
    return np.sum(r / r.sum(-1, keepdims=True) * np.sum(o_k * e_k, -1), -1)


def projection_reference(o, z):
    """Eq. 11: o_k = o + sigmoid(o * z_k) * o, `[..., K, d]`."""
    return o[..., None, :] + sigmoid(o[..., None, :] * z) * o[..., None, :]


def din_head_reference(model, interest, e):
    x = np.concatenate([interest, e, interest * e], -1)
    for layer in model.head:
        x = np.maximum(x @ n(layer.kernel) + n(layer.bias), 0.0)
    return (x @ n(model.logit.kernel) + n(model.logit.bias))[..., 0]


def din_weights(model):
    return [
        [n(w) for w in layer.weights]
        for layer in [*model.attention.hidden_layers, model.attention.score]
    ]


def din_score_reference(model, keys, valid, e):
    """DIN's score of item `e` `[d]` for keys `[L, d]` where `valid` `[L]`."""
    pooled, _ = din_reference(keys[None], e[None], valid[None], din_weights(model), "sigmoid")
    return din_head_reference(model, pooled[0], e)


def hidden_reference(model, batch):
    """The last block's states `[B, L, d]` of SASRec / SINE (paper beta mode) in numpy:
    X = E + P (positions counted from the right) zeroed at padding; SINE's sub-interest
    of each positive by eq. 4 (its nearest passive negative subtracted where it has
    one); per block the causal attention (eq. 7), the beta re-weighting of eq. 8-9 with
    the query position's own sub-interest (SINE), eq. 10; then the final LayerNorm.
    The block equations are the layer tests' numpy references (tests/layers/test_sine.py)."""
    from tests.layers.test_sine import (
        attention_weights_reference,
        block_reference,
        block_weights,
        paper_beta_reference,
    )

    table = n(model.item_embedding.embeddings)
    ids = batch["inputs"]
    mask = ids > 0
    length = ids.shape[1]
    positions = n(model.position_embedding.embeddings)[np.arange(length) + model.m.max_length
                                                        - length]
    x = np.where(mask[..., None], table[ids] + positions, 0.0)
    interests = None
    if model.architecture == "sine":
        assert model.m.beta_mode == "paper"
        z = n(model.assignment.prototypes)  # [K, d]
        score = table[ids] @ z.T
        negatives = batch["input_negatives"]
        if model.m.assignment_uses_negatives:
            score = score - np.where((negatives != 0)[..., None], table[negatives] @ z.T, 0.0)
        interests = score.argmax(-1)
    for block in model.blocks:
        w = block_weights(block)
        alpha = attention_weights_reference(x, mask, w)
        if interests is not None:
            beta_1 = (sigmoid(n(block.beta_logit)) if block.beta_logit is not None
                      else block.beta)
            alpha = paper_beta_reference(alpha, interests, interests, beta_1)
        x = block_reference(x, mask, w, alpha)
    norm = model.final_norm
    return layer_norm(x, n(norm.gamma), n(norm.beta), norm.epsilon)


def state_reference(model, batch):
    """What each architecture scores with, in numpy: the last block's states (SASRec,
    `hidden_reference`), the GRU's states, eq. 11 over the last block's states (SINE),
    the embedded inputs (DIN's keys)."""
    table = n(model.item_embedding.embeddings)
    mask = batch["inputs"] > 0
    if model.architecture == "gru4rec":
        gru = model.gru.cell
        return gru_reference(
            table[batch["inputs"]], mask, n(gru.kernel), n(gru.recurrent_kernel), n(gru.bias)
        )
    if model.architecture == "din":
        return np.where(mask[..., None], table[batch["inputs"]], 0.0)
    if model.architecture == "sine":
        return projection_reference(hidden_reference(model, batch),
                                    n(model.assignment.prototypes))
    return hidden_reference(model, batch)


def train_scores_reference(model, batch, ids):
    """Scores `[B, L]` of the items `ids` `[B, L]`, one per target position."""
    table = n(model.item_embedding.embeddings)
    states, e = state_reference(model, batch), table[ids]
    if model.architecture == "sine":
        fusion = model.fusion.importance
        return fusion_reference(states, e, n(fusion.kernel), n(fusion.bias))
    if model.architecture != "din":
        return np.sum(states * e, -1)
    mask = batch["inputs"] > 0
    out = np.zeros(ids.shape)
    for b, t in np.ndindex(*ids.shape):
        valid = mask[b] & (np.arange(ids.shape[1]) <= t)  # causal: keys j <= t
        out[b, t] = din_score_reference(model, states[b], valid, e[b, t])
    return out


def item_scores_reference(model, batch, rows):
    """Evaluation scores `[B, R]` of the item rows `rows` `[B, R]` from the last state."""
    table = n(model.item_embedding.embeddings)
    states, e = state_reference(model, batch), table[rows]
    if model.architecture == "sine":
        last = np.broadcast_to(states[:, -1, None], (*rows.shape, *states.shape[2:]))
        fusion = model.fusion.importance
        return fusion_reference(last, e, n(fusion.kernel), n(fusion.bias))
    if model.architecture != "din":
        return np.einsum("bd,brd->br", states[:, -1], e)
    mask = batch["inputs"] > 0
    return np.array(
        [
            [din_score_reference(model, states[b], mask[b], e[b, r]) for r in range(rows.shape[1])]
            for b in range(rows.shape[0])
        ]
    )


def rank_reference(scores, target_scores, target, exclude, catalogue_start=CAT):
    """Catalogue rows (columns of `scores`) scoring >= the target, the target's row and
    the excluded rows not counted (pessimistic ties)."""
    ranks = []
    for b in range(len(target)):
        count = 0
        for j, score in enumerate(scores[b]):
            row = catalogue_start + j
            if row != target[b] and row not in exclude[b] and score >= target_scores[b]:
                count += 1
        ranks.append(count)
    return np.array(ranks, "float64")


def bpr_reference(pos, neg, mask):
    """Eq. 15, the mean over the unmasked pairs of -log sigmoid(pos - neg)."""
    losses = -np.log(sigmoid(pos - neg))
    return float(np.sum(losses * mask) / max(mask.sum(), 1.0))


def dcor_reference(z):
    """Sum over prototype pairs k < l of the distance correlation of the rows, each a
    sample of d scalars: double-centred distance matrices, V-statistic dCov^2,
    dCor = sqrt(dCov^2(k, l) / sqrt(dVar^2(k) dVar^2(l)))."""
    centred = []
    for row in z:
        a = np.abs(row[:, None] - row[None, :])
        centred.append(a - a.mean(0) - a.mean(1)[:, None] + a.mean())
    total = 0.0
    for k in range(len(z)):
        for m in range(k + 1, len(z)):
            cov = np.mean(centred[k] * centred[m])
            var = np.sqrt(np.mean(centred[k] ** 2) * np.mean(centred[m] ** 2))
            total += np.sqrt(max(cov, 0.0) / var)
    return total


# --------------------------------------------------------------------------------------
# Scores and loss against numpy.


@pytest.mark.parametrize("arch, longer", [*((a, 0) for a in ARCHS), ("sasrec", 3),
                                           ("sine", 3)])
def test_training_scores_match_reference(arch, longer):
    # longer > 0: max_length above the batch's width, so the position embeddings are
    # read from the right (rows max_length - L .. max_length - 1)
    model = make_model(arch, max_length=L + longer)
    batch = train_batch(np.random.default_rng(1))
    out = to_numpy(model(batch, training=True))
    keys = [("positive", "targets"), ("negative", "random_negatives")]
    if arch == "din":  # L1 only: DIN computes no feedback scores
        assert set(out) == {"positive", "negative"}
    else:
        keys.append(("feedback", "target_negatives"))
    for key, ids in keys:
        np.testing.assert_allclose(
            out[key],
            train_scores_reference(model, batch, batch[ids]),
            rtol=2e-5,
            atol=2e-5,
            err_msg=key,
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_matches_reference(arch):
    model = make_model(arch, **LAMBDAS)
    batch = train_batch(np.random.default_rng(2))
    y_pred = model(batch, training=True)
    got = float(n(model.compute_loss(batch, None, y_pred)))
    pos, neg, feedback = (
        train_scores_reference(model, batch, batch[k])
        for k in ("targets", "random_negatives", "target_negatives")
    )
    mask = batch["mask"]
    want = LAMBDAS["lambda_1"] * bpr_reference(pos, neg, mask)
    if arch in ("sasrec_n", "sine"):
        l2_mask = mask * (batch["target_negatives"] > 0)
        assert 0 < l2_mask.sum() < mask.sum()  # L2 pairs without a negative are masked
        want += LAMBDAS["lambda_2"] * bpr_reference(pos, feedback, l2_mask)
    if arch == "sine":
        want += LAMBDAS["lambda_3"] * dcor_reference(n(model.assignment.prototypes))
    np.testing.assert_allclose(got, want, rtol=2e-5)


@pytest.mark.parametrize("arch", ["sasrec", "sine"])
def test_grouped_batch_loss_is_the_pair_sum_over_the_chunk_mean(arch):
    """A length-grouped batch carries `loss_scale` / `feedback_scale` (its pair counts
    over the chunk's mean counts): L1 and L2 become each term's sum over the batch's
    pairs divided by the chunk's mean count (numpy, from the scores)."""
    model = make_model(arch, **LAMBDAS)
    batch = train_batch(np.random.default_rng(2))
    mask = batch["mask"]
    l2_mask = mask * (batch["target_negatives"] > 0)
    chunk_mean, chunk_feedback_mean = 1.7 * mask.sum(), 0.6 * l2_mask.sum()
    b = len(mask)
    batch["loss_scale"] = np.full(b, mask.sum() / chunk_mean, "float32")
    batch["feedback_scale"] = np.full(b, l2_mask.sum() / chunk_feedback_mean, "float32")
    got = float(n(model.compute_loss(batch, None, model(batch, training=True))))
    pos, neg, feedback = (
        train_scores_reference(model, batch, batch[k])
        for k in ("targets", "random_negatives", "target_negatives")
    )

    def pair_sum(a, b, m):
        return float((np.logaddexp(0.0, -(a - b)) * m).sum())

    want = LAMBDAS["lambda_1"] * pair_sum(pos, neg, mask) / chunk_mean
    if arch == "sine":
        want += LAMBDAS["lambda_2"] * pair_sum(pos, feedback, l2_mask) / chunk_feedback_mean
        want += LAMBDAS["lambda_3"] * dcor_reference(n(model.assignment.prototypes))
    np.testing.assert_allclose(got, want, rtol=2e-5)


# --------------------------------------------------------------------------------------
# Evaluation: target and candidate scores, full-ranking rank.

RANK_CASES = [(arch, None) for arch in ARCHS] + [
    ("sasrec", 7),
    ("din", 7),
    ("din", 27),
    ("sine", 4),
]


@pytest.mark.parametrize(("arch", "chunk"), RANK_CASES)
def test_evaluation_matches_reference(arch, chunk):
    model = make_model(arch, seed=3, rank_chunk_size=chunk)
    if chunk is not None:
        assert model.rank_chunk_size() == chunk
    batch = eval_batch(np.random.default_rng(4))
    out = to_numpy(model(batch))
    catalogue = np.broadcast_to(np.arange(CAT, NUM_ITEMS), (B, NUM_ITEMS - CAT))
    scores = item_scores_reference(model, batch, catalogue)
    target = item_scores_reference(model, batch, batch["target"][:, None])[:, 0]
    np.testing.assert_allclose(out["target_score"], target, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(
        out["candidate_scores"],
        item_scores_reference(model, batch, batch["candidates"]),
        rtol=2e-5,
        atol=2e-5,
    )
    want = rank_reference(scores, target, batch["target"], batch["exclude"])
    # no near-ties in this case: float32 and float64 ranks must agree exactly
    gaps = np.abs(scores - target[:, None])
    assert gaps[gaps > 0].min() > 1e-4
    np.testing.assert_array_equal(out["rank"], want)
    assert np.isfinite(out["target_score"][-1])  # the all-padding user
    # the target appears in user 0's inputs: every other kept row is counted
    kept = [r for r in range(CAT, NUM_ITEMS) if r not in batch["exclude"][0] and r != 12]
    assert out["rank"][0] == sum(scores[0, r - CAT] >= target[0] for r in kept)


@pytest.mark.parametrize(("arch", "chunk"), [*((a, None) for a in ARCHS), ("din", 5)])
def test_constant_model_ties_are_pessimistic(arch, chunk):
    """All item rows equal: every score ties, so every kept catalogue row but the
    target ranks above it (a constant model earns nothing)."""
    model = make_model(arch, rank_chunk_size=chunk)
    model.item_embedding.embeddings.assign(np.zeros((NUM_ITEMS, D), "float32"))
    batch = eval_batch(np.random.default_rng(5))
    rank = to_numpy(model(batch))["rank"]
    for b, target in enumerate(batch["target"]):
        kept = {r for r in range(CAT, NUM_ITEMS)} - set(batch["exclude"][b]) - {target}
        assert rank[b] == len(kept)


# --------------------------------------------------------------------------------------
# Causality, leakage, padding.


@pytest.mark.parametrize("arch", ARCHS)
def test_no_leakage_from_targets(arch):
    """The states never read the targets or the negatives; each score reads only its
    own item: changing the targets changes only `positive`, and only where changed."""
    model = make_model(arch)
    rng = np.random.default_rng(6)
    batch = train_batch(rng)
    other = dict(
        batch,
        targets=batch["targets"].copy(),
        random_negatives=rng.integers(CAT, NUM_ITEMS, (B, L)),
        target_negatives=rng.integers(1, NUM_ITEMS, (B, L)),
    )
    other["targets"][:, 2] = rng.integers(1, NUM_ITEMS, B)
    np.testing.assert_array_equal(
        n(model.encode(other, training=True)), n(model.encode(batch, training=True))
    )
    got, want = to_numpy(model(other, training=True)), to_numpy(model(batch, training=True))
    unchanged = np.arange(L) != 2
    np.testing.assert_allclose(
        got["positive"][:, unchanged], want["positive"][:, unchanged], rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_causality(arch):
    """A later input (and its negative) changes no earlier state or score."""
    model = make_model(arch)
    rng = np.random.default_rng(7)
    batch = train_batch(rng, lengths=(6, 6, 5, 4, 6))
    later = dict(
        batch, inputs=batch["inputs"].copy(), input_negatives=batch["input_negatives"].copy()
    )
    later["inputs"][:, 4:] = rng.integers(1, NUM_ITEMS, (B, 2))
    later["input_negatives"][:, 4:] = rng.integers(0, NUM_ITEMS, (B, 2))
    for key in ("inputs", "input_negatives"):
        assert (later[key][:, 4:] != batch[key][:, 4:]).any()
    np.testing.assert_allclose(
        n(model.encode(later, training=True))[:, :4],
        n(model.encode(batch, training=True))[:, :4],
        rtol=1e-5,
        atol=1e-6,
    )
    got, want = to_numpy(model(later, training=True)), to_numpy(model(batch, training=True))
    for key in want:
        np.testing.assert_allclose(got[key][:, :4], want[key][:, :4], rtol=1e-5, atol=1e-6)
        assert not np.allclose(got[key][:, 4:], want[key][:, 4:])


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padding_equals_shorter_sequence(arch):
    """A left-padded row scores as its unpadded sequence (positions count from the
    right end), whatever the padded slots' negatives; an all-padding user is finite."""
    model = make_model(arch)
    batch = eval_batch(np.random.default_rng(8))
    noisy = dict(batch, input_negatives=np.where(batch["inputs"] == 0, 7, batch["input_negatives"]))
    padded = to_numpy(model(noisy))
    short = to_numpy(
        model(
            {
                k: (v[:, 2:] if k in ("inputs", "input_negatives", "exclude") else v)
                for k, v in batch.items()
            }
        )
    )
    rows = [1, 3, 4]  # the users with at least two padded slots
    for key in padded:
        np.testing.assert_allclose(padded[key][rows], short[key][rows], rtol=1e-5, atol=1e-5)
        assert np.isfinite(padded[key]).all()
    train = train_batch(np.random.default_rng(9))
    out = to_numpy(model(train, training=True))
    assert all(np.isfinite(v).all() for v in out.values())
    assert np.isfinite(n(model.compute_loss(train, None, model(train, training=True))))


@pytest.mark.parametrize("arch", ARCHS)
def test_training_batch_cut_to_its_longest_user(arch):
    """Length grouping (`sequential_input.group_by_length`) keeps only a batch's last
    columns: the training scores of the real slots and the loss are those of the full
    batch, also through a compiled step whose input length is dynamic (one trace for
    every bucket)."""
    import tensorflow as tf

    model = make_model(arch)
    full = train_batch(np.random.default_rng(10))  # longest user: 6 of L slots
    assert not full["mask"][:, :-6].any() and not full["inputs"][:, :-6].any()
    cut = {k: v[:, -6:] for k, v in full.items()}
    want = to_numpy(model(full, training=False))
    got = to_numpy(model(cut, training=False))
    for key in want:
        np.testing.assert_allclose(got[key], want[key][:, -6:], rtol=1e-5, atol=1e-5)

    def loss(batch):
        return model.compute_loss(batch, None, model(batch, training=False))

    np.testing.assert_allclose(n(loss(cut)), n(loss(full)), rtol=1e-5)
    if keras.backend.backend() == "tensorflow":
        spec = {k: tf.TensorSpec([None, None], tf.as_dtype(v.dtype)) for k, v in full.items()}
        step = tf.function(loss, input_signature=[spec], jit_compile=True)
        for batch in (full, cut):
            np.testing.assert_allclose(n(step(batch)), n(loss(full)), rtol=1e-5)


@pytest.mark.parametrize("arch", ["sasrec", "sine", "gru4rec", "fusion_mean"])
def test_catalogue_scores_equal_the_catalogue_as_candidates(arch):
    """`catalogue_scores` (the table read in place; SINE's fused product) gives every
    catalogue row the score `candidate_scores` gives it as a candidate."""
    model = make_model("sine", fusion="mean") if arch == "fusion_mean" else make_model(arch)
    batch = eval_batch(np.random.default_rng(14))
    catalogue = np.arange(CAT, NUM_ITEMS)
    as_candidates = dict(batch, candidates=np.tile(catalogue, (B, 1)))
    want = to_numpy(model(as_candidates))["candidate_scores"]
    got = n(model.catalogue_scores(batch))
    assert got.shape == (B, NUM_ITEMS - CAT)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_catalogue_scores_refuse_din():
    model = make_model("din")
    with pytest.raises(ValueError, match="does not apply to DIN"):
        model.catalogue_scores(eval_batch(np.random.default_rng(15)))


def test_gru_state_is_the_unpadded_state():
    """GRU4Rec's last state of a left-padded user is the GRU run over its real items
    only (the mask carries the zero initial state over the padding)."""
    model = make_model("gru4rec")
    batch = eval_batch(np.random.default_rng(10))
    states = n(model.encode(batch))
    gru, table = model.gru.cell, n(model.item_embedding.embeddings)
    items = table[batch["inputs"][1, -3:]][None]  # user 1's three items, no padding
    want = gru_reference(
        items, np.ones((1, 3), bool), n(gru.kernel), n(gru.recurrent_kernel), n(gru.bias)
    )
    np.testing.assert_allclose(states[1, -3:], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(states[1, :-3], 0.0)


# --------------------------------------------------------------------------------------
# Serialization, compile, validation, XLA.


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load(arch, tmp_path):
    model = make_model(arch, rank_chunk_size=7 if arch == "din" else None)
    rng = np.random.default_rng(11)
    model.compile(optimizer="adam")
    model.fit(train_batch(rng), epochs=1, verbose=0)  # optimizer state to restore
    assert_config_round_trip(model)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert int(n(loaded.optimizer.iterations)) == 1
    for want, got in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(n(got), n(want))
    for batch, training in ((eval_batch(rng), False), (train_batch(rng), True)):
        want, got = (
            to_numpy(model(batch, training=training)),
            to_numpy(loaded(batch, training=training)),
        )
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert json.dumps(loaded.get_config()["model"], sort_keys=True) == json.dumps(
        model.get_config()["model"], sort_keys=True
    )


def test_compile_refuses_a_loss():
    model = SequentialRecommender(NUM_ITEMS, {"architecture": "sasrec", **SMALL})
    with pytest.raises(ValueError, match=r"computes its own loss.*Received: loss='mse'"):
        model.compile(optimizer="adam", loss="mse")


def test_din_has_no_item_independent_score():
    model = make_model("din")
    with pytest.raises(ValueError, match="`score` does not apply to DIN"):
        model.score(np.zeros((1, D), "float32"), np.zeros((1, D), "float32"))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": "dien"}, r"model\.architecture"),
        ({"attention_units": []}, r"attention_units: needs at least one layer"),
        ({"attention_units": [4, 0]}, r"attention_units: every entry must be >= 1"),
        ({"mlp_units": [-1]}, r"mlp_units: every entry must be >= 1"),
        ({"rank_chunk_size": 0}, r"rank_chunk_size: must be >= 1"),
        ({"din_train_positions": 0}, r"din_train_positions: must be >= 1"),
    ],
)
def test_config_validation(config, message):
    with pytest.raises(ConfigError, match=message):
        SequentialRecommender(NUM_ITEMS, config)


def test_catalogue_start_validation():
    with pytest.raises(ValueError, match=r"`catalogue_start` must be in \[1, num_items\)"):
        SequentialRecommender(NUM_ITEMS, {"architecture": "gru4rec"}, catalogue_start=NUM_ITEMS)


def test_automatic_rank_chunk():
    assert make_model("sasrec").rank_chunk_size() == NUM_ITEMS - CAT
    big = SequentialRecommender(5000, {"architecture": "din", "max_length": 200})
    assert big.rank_chunk_size() == (1 << 20) // (200 * (50 + 80 + 40))  # 30


def test_din_draws_target_positions():
    """`din_train_positions` T < L: each user scores T distinct real target positions
    (all of them when it has fewer), drawn uniformly; the scores at the drawn positions
    are the every-position scores, and the loss is eq. 15 over the drawn real ones."""
    model = make_model("din", din_train_positions=3)
    batch = train_batch(np.random.default_rng(20), lengths=(6, 4, 2, 1, 0))
    out = to_numpy(model(batch, training=True))
    assert set(out) == {"positive", "negative", "positions", "mask"}
    assert out["positive"].shape == out["positions"].shape == (B, 3)
    positions, drawn = out["positions"].astype(int), out["mask"] > 0
    for b in range(B):
        real = set(np.flatnonzero(batch["mask"][b]))
        got = positions[b][drawn[b]]
        assert len(set(got)) == len(got) == min(3, len(real)), b
        assert set(got) <= real, b
    want = {
        key: np.take_along_axis(train_scores_reference(model, batch, batch[ids]), positions, 1)
        for key, ids in (("positive", "targets"), ("negative", "random_negatives"))
    }
    for key in want:
        np.testing.assert_allclose(
            out[key][drawn], want[key][drawn], rtol=2e-5, atol=2e-5, err_msg=key
        )
    y_pred = model(batch, training=True)  # a fresh draw
    drawn = n(y_pred["mask"])
    positions = n(y_pred["positions"]).astype(int)
    pos, neg = (
        np.take_along_axis(train_scores_reference(model, batch, batch[k]), positions, 1)
        for k in ("targets", "random_negatives")
    )
    np.testing.assert_allclose(
        float(n(model.compute_loss(batch, None, y_pred))),
        bpr_reference(pos, neg, drawn),
        rtol=2e-5,
    )

    # uniform: 1,200 copies of a user with 6 real targets and of one with 4
    rows = np.repeat([0, 1], 1200)
    many = to_numpy(model({k: v[rows] for k, v in batch.items()}, training=True))
    for user, first in ((0, 0), (1, 2)):
        picked = many["positions"][rows == user].astype(int).ravel()
        counts = np.bincount(picked, minlength=L)
        expected = 1200 * 3 / (L - first)  # 600 and 900
        assert counts[:first].sum() == 0
        assert np.all(np.abs(counts[first:] - expected) < 5 * np.sqrt(expected)), counts


def test_din_draws_under_a_dynamic_length():
    """Under length grouping the compiled step sees a dynamic L, also one shorter than
    T: then every real target is scored, so the loss is the every-position loss."""
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function input signature")
    model = make_model("din", din_train_positions=4)
    full = train_batch(np.random.default_rng(21), lengths=(3, 3, 2, 1, 0))
    cut = {k: v[:, -3:] for k, v in full.items()}
    pos, neg = (
        train_scores_reference(model, full, full[k]) for k in ("targets", "random_negatives")
    )
    want = bpr_reference(pos, neg, full["mask"])

    def loss(batch):
        return model.compute_loss(batch, None, model(batch, training=True))

    spec = {k: tf.TensorSpec([None, None], tf.as_dtype(v.dtype)) for k, v in full.items()}
    step = tf.function(loss, input_signature=[spec], jit_compile=True)
    for batch in (full, cut):
        np.testing.assert_allclose(n(step(batch)), want, rtol=1e-5)


@pytest.mark.parametrize("arch", ["sine", "gru4rec", "din"])
def test_xla_matches_eager(arch):
    model = make_model(arch, rank_chunk_size=7)
    rng = np.random.default_rng(12)
    for batch, training in ((eval_batch(rng), False), (train_batch(rng), True)):
        want = to_numpy(model(batch, training=training))
        got = to_numpy(xla_call(model, batch, training=training))
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# Learning: deterministic item cycles i -> i + 1.

CYCLE, CYCLE_LEN = 60, 8


def cycle_batches(rng, users):
    """Training users: runs of 3..8 consecutive items of the cycle (rows 1..60);
    evaluation users: 8 items, the target the next one."""
    start = rng.integers(0, CYCLE, users)
    length = rng.integers(3, CYCLE_LEN + 1, users)
    seqs = [1 + (s + np.arange(k + 1)) % CYCLE for s, k in zip(start, length, strict=True)]
    inputs = left_pad([q[:-1] for q in seqs], CYCLE_LEN)
    targets = left_pad([q[1:] for q in seqs], CYCLE_LEN)
    mask = targets > 0
    negatives = 1 + (targets - 1 + rng.integers(1, CYCLE, targets.shape)) % CYCLE
    train = {
        "inputs": inputs,
        "input_negatives": np.zeros_like(inputs),
        "targets": targets,
        "target_negatives": np.zeros_like(inputs),
        "random_negatives": np.where(mask, negatives, 0),
        "mask": mask.astype("float32"),
    }
    start = rng.integers(0, CYCLE, 200)
    seqs = np.array([1 + (s + np.arange(CYCLE_LEN + 1)) % CYCLE for s in start])
    evaluation = {
        "inputs": seqs[:, :-1],
        "input_negatives": np.zeros_like(seqs[:, :-1]),
        "target": seqs[:, -1],
        "exclude": seqs[:, :-1],
    }
    return train, evaluation


@pytest.mark.parametrize("arch", ["sasrec", "sine", "gru4rec", "din"])
def test_learns_item_cycles(arch):
    keras.utils.set_random_seed(0)
    train, evaluation = cycle_batches(np.random.default_rng(13), 4096)
    model = SequentialRecommender(
        CYCLE + 1,
        {
            "architecture": arch,
            "embedding_dim": 16,
            "max_length": CYCLE_LEN,
            "num_blocks": 1,
            "dropout": 0.1,
            "attention_units": [16],
            "mlp_units": [16],
        },
    )
    before = to_numpy(model(evaluation))["rank"]
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(train, batch_size=64, epochs=3, verbose=0)
    rank = model.predict(evaluation, batch_size=200, verbose=0)["rank"]
    hr10 = float(np.mean(rank < 10))
    chance = 10 / (CYCLE - CYCLE_LEN)
    assert np.mean(before < 10) < 2 * chance  # untrained: about chance
    assert hr10 > 0.9, (hr10, chance)


# --------------------------------------------------------------------------------------
# JAX backend.

JAX_SCRIPT = textwrap.dedent(
    """
    import keras
    import numpy as np

    assert keras.backend.backend() == "jax", keras.backend.backend()
    from tests.helpers import to_numpy, xla_call
    from tests.models import test_sequential as t

    catalogue = np.broadcast_to(np.arange(t.CAT, t.NUM_ITEMS), (t.B, t.NUM_ITEMS - t.CAT))
    for arch, chunk in (("sine", 4), ("gru4rec", None), ("din", 7)):
        model = t.make_model(arch, rank_chunk_size=chunk)
        batch = t.eval_batch(np.random.default_rng(0))
        out = to_numpy(xla_call(model, batch))  # jax.jit over stateless_call
        target = t.item_scores_reference(model, batch, batch["target"][:, None])[:, 0]
        np.testing.assert_allclose(out["target_score"], target, rtol=2e-5, atol=2e-5)
        scores = t.item_scores_reference(model, batch, catalogue)
        np.testing.assert_array_equal(
            out["rank"], t.rank_reference(scores, target, batch["target"], batch["exclude"]))
        train = t.train_batch(np.random.default_rng(1))
        got = to_numpy(xla_call(model, train, training=True))["positive"]
        want = t.train_scores_reference(model, train, train["targets"])
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
        model.compile(optimizer="adam")
        model.fit(train, epochs=1, verbose=0)
    model = t.make_model("din", din_train_positions=3)  # drawn target positions
    train = t.train_batch(np.random.default_rng(1))
    out = to_numpy(xla_call(model, train, training=True))
    full = t.train_scores_reference(model, train, train["targets"])
    drawn = out["mask"] > 0
    np.testing.assert_allclose(
        out["positive"][drawn],
        np.take_along_axis(full, out["positions"].astype(int), 1)[drawn], rtol=2e-5, atol=2e-5)
    model.compile(optimizer="adam")
    model.fit(train, epochs=1, verbose=0)
    print("JAX_SEQUENTIAL_OK")
    """
)


def test_models_under_jax_backend():
    result = run_under_jax(JAX_SCRIPT)
    assert "JAX_SEQUENTIAL_OK" in result.stdout


@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_batch_and_candidates(arch):
    """Traced with an unknown batch size, candidate count and history length (as the
    export's `score` signature does, and evaluation under length grouping), the outputs
    equal the eager ones, also compiled."""
    import tensorflow as tf

    model = make_model(arch, rank_chunk_size=7 if arch == "din" else None)
    batch = eval_batch(np.random.default_rng(14))
    spec = {k: tf.TensorSpec([None] * v.ndim, tf.int64) for k, v in batch.items()}
    want = to_numpy(model(batch))
    for jit in (False, True):
        traced = tf.function(lambda x: model(x), input_signature=[spec], jit_compile=jit)
        got = to_numpy(traced(batch))
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
