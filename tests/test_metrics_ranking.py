"""Tests for the next-item metrics of tfnegseq.metrics: SINE's candidate protocol and
full ranking. References: scikit-learn AUCs, ranks found by sorting, hand-worked
examples, and keras-rs' ranking metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tfnegseq.metrics import (
    candidate_metrics,
    candidate_ranks,
    full_ranking_metrics,
    hit_rate,
    mrr,
    ndcg,
    rank_of_targets,
)

NAN = float("nan")
# Four users; the positive's score, then its negatives (NaN = padding, masked out).
POSITIVES = [0.8, 0.7, 0.3, 0.4]
NEGATIVES = [[0.9, 0.5, 0.8], [0.1, 0.2, NAN], [NAN, NAN, NAN], [0.6, NAN, NAN]]
MASK = [[True, True, True], [True, True, False], [False, False, False], [True, False, False]]


def random_candidates(seed, users=300, slots=8, decimals=1):
    rng = np.random.default_rng(seed)
    positive = np.round(rng.random(users) + 0.2, decimals)
    negative = np.round(rng.random((users, slots)), decimals)  # 1 decimal: many ties
    mask = rng.random((users, slots)) < rng.random((users, 1))  # ragged, some users empty
    return positive, np.where(mask, negative, np.nan), mask


def sorted_rank(positive, negatives, ties):
    """Rank by sorting [positive] + negatives, best first; ties put the positive last
    (pessimistic) or first (optimistic)."""
    items = [(positive, 1)] + [(s, 0) for s in negatives]
    after = 1 if ties == "pessimistic" else -1
    order = sorted(items, key=lambda item: (-item[0], after * item[1]))
    return [i for i, (_, is_positive) in enumerate(order) if is_positive][0]


# --------------------------------------------------------------------------------------
# SINE's protocol: one positive against its passive negatives.


def test_candidate_ranks_hand_worked_tie_rules():
    # user 0: 0.9 is above 0.8 and one 0.8 ties -> pessimistic 2, optimistic 1, average 1.5
    # user 1: nothing above 0.7 -> 0; user 2: no negatives -> 0; user 3: 0.6 > 0.4 -> 1
    for ties, expected in [
        ("pessimistic", [2, 0, 0, 1]),
        ("optimistic", [1, 0, 0, 1]),
        ("average", [1.5, 0, 0, 1]),
    ]:
        ranks = candidate_ranks(POSITIVES, NEGATIVES, MASK, ties=ties)
        np.testing.assert_array_equal(ranks, expected)


def test_candidate_metrics_hand_worked():
    out = candidate_metrics(POSITIVES, NEGATIVES, MASK)
    # Pooled AUC, positives (0.8, 0.7, 0.3, 0.4) vs negatives (0.9, 0.5, 0.8, 0.1, 0.2, 0.6):
    # 0.8 beats 4 and ties 1 -> 4.5; 0.7 beats 4; 0.3 beats 2; 0.4 beats 2 -> 12.5 / 24.
    assert out["auc"] == pytest.approx(12.5 / 24)
    # Per-user AUC: user 0 (1 below + 0.5 tie) / 3 = 0.5, user 1: 1, user 3: 0; user 2
    # has no negative. Unweighted mean = 0.5.
    assert out["gauc"] == pytest.approx(0.5)
    # Pessimistic ranks 2, 0, 1 (user 2 left out): NDCG@2 = (0 + 1 + 1/log2 3) / 3.
    assert out["ndcg@2"] == pytest.approx((0 + 1 + 1 / math.log2(3)) / 3)
    # No cutoff (the official code's NDCG_2): (1/log2 4 + 1 + 1/log2 3) / 3.
    assert out["ndcg_no_cutoff"] == pytest.approx((0.5 + 1 + 1 / math.log2(3)) / 3)
    assert (out["num_users"], out["num_ranked_users"], out["num_gauc_users"]) == (4, 3, 3)
    # The official code's GAUC keeps users with >= 2 negatives: users 0 and 1 -> 0.75.
    official = candidate_metrics(POSITIVES, NEGATIVES, MASK, gauc_min_negatives=2)
    assert official["gauc"] == pytest.approx(0.75) and official["num_gauc_users"] == 2
    # Optimistic ties: user 0 at rank 1 -> NDCG@2 = (1/log2 3 + 1 + 1/log2 3) / 3.
    optimistic = candidate_metrics(POSITIVES, NEGATIVES, MASK, ties="optimistic", k=2)
    assert optimistic["ndcg@2"] == pytest.approx((2 / math.log2(3) + 1) / 3)
    assert optimistic["auc"] == out["auc"] and optimistic["gauc"] == out["gauc"]


@pytest.mark.parametrize("seed", [0, 1])
def test_candidate_auc_and_gauc_match_sklearn(seed):
    positive, negative, mask = random_candidates(seed)
    assert (mask.sum(axis=1) == 0).any() and (mask.sum(axis=1) == 1).any()
    labels = np.concatenate([np.ones(len(positive)), np.zeros(mask.sum())])
    pooled = roc_auc_score(labels, np.concatenate([positive, negative[mask]]))
    per_user = {
        u: roc_auc_score([1] + [0] * mask[u].sum(), [positive[u], *negative[u][mask[u]]])
        for u in range(len(positive))
        if mask[u].any()
    }
    for min_negatives in (1, 2):
        out = candidate_metrics(positive, negative, mask, gauc_min_negatives=min_negatives)
        kept = [v for u, v in per_user.items() if mask[u].sum() >= min_negatives]
        assert out["auc"] == pytest.approx(pooled, abs=1e-12)
        assert out["gauc"] == pytest.approx(np.mean(kept), abs=1e-12)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_candidate_ranks_and_ndcg_match_sorting(ties):
    positive, negative, mask = random_candidates(2)
    ranked_users = [u for u in range(len(positive)) if mask[u].any()]
    expected = [sorted_rank(positive[u], negative[u][mask[u]], ties) for u in range(len(positive))]
    np.testing.assert_array_equal(candidate_ranks(positive, negative, mask, ties=ties), expected)
    gains = [1 / math.log2(expected[u] + 2) for u in ranked_users]
    out = candidate_metrics(positive, negative, mask, k=2, ties=ties)
    assert out["ndcg_no_cutoff"] == pytest.approx(np.mean(gains))
    cut = [g if expected[u] < 2 else 0.0 for u, g in zip(ranked_users, gains, strict=True)]
    assert out["ndcg@2"] == pytest.approx(np.mean(cut))
    # "average" is the mean of the two.
    average = candidate_ranks(positive, negative, mask, ties="average")
    pessimistic = candidate_ranks(positive, negative, mask)
    optimistic = candidate_ranks(positive, negative, mask, ties="optimistic")
    np.testing.assert_array_equal(average, (pessimistic + optimistic) / 2)


def test_candidate_metrics_edge_cases():
    # No negative at all: nothing to rank, the pooled AUC has one class.
    out = candidate_metrics([0.5, 0.2], np.zeros((2, 0)))
    assert math.isnan(out["auc"]) and math.isnan(out["gauc"]) and math.isnan(out["ndcg@2"])
    assert out["num_ranked_users"] == 0
    # Constant scores earn nothing under the default (pessimistic) rule.
    out = candidate_metrics([0.5, 0.5], [[0.5, 0.5], [0.5, 0.5]])
    assert out["ndcg@2"] == 0.0 and out["gauc"] == 0.5 and out["auc"] == 0.5


# --------------------------------------------------------------------------------------
# Full ranking.

SCORES = np.array([[0.1, 0.9, 0.5, 0.7, 0.5, 0.3], [0.2, 0.1, 0.0, 0.3, 0.9, 0.8]])
TARGETS = np.array([2, 5])
EXCLUDE = np.zeros((2, 6), bool)
EXCLUDE[0, 1] = EXCLUDE[1, 4] = True  # earlier positives, scoring above the targets


def test_rank_of_targets_hand_worked():
    # user 0: target 0.5; 0.9 is excluded, 0.7 is above, one 0.5 ties -> 2 / 1 / 1.5
    # user 1: target 0.8; only 0.9 was above and it is excluded -> 0
    np.testing.assert_array_equal(rank_of_targets(SCORES, TARGETS, EXCLUDE), [2, 0])
    np.testing.assert_array_equal(
        rank_of_targets(SCORES, TARGETS, EXCLUDE, ties="optimistic"), [1, 0]
    )
    np.testing.assert_array_equal(
        rank_of_targets(SCORES, TARGETS, EXCLUDE, ties="average"), [1.5, 0]
    )
    # Without the exclusion the excluded items count: 0.9 above each target.
    np.testing.assert_array_equal(rank_of_targets(SCORES, TARGETS), [3, 1])
    # From ranks [2, 0]: HR@1 = 1/2, HR@3 = 1, NDCG@3 = (1/log2 4 + 1) / 2 = 0.75,
    # NDCG@2 = (0 + 1) / 2, MRR = (1/3 + 1) / 2.
    ranks = rank_of_targets(SCORES, TARGETS, EXCLUDE)
    assert hit_rate(ranks, 1) == 0.5 and hit_rate(ranks, 3) == 1.0
    assert ndcg(ranks, 3) == pytest.approx(0.75) and ndcg(ranks, 2) == pytest.approx(0.5)
    assert mrr(ranks) == pytest.approx((1 / 3 + 1) / 2)


def test_hit_rate_ndcg_mrr_hand_worked():
    ranks = [0, 3, 12, 9]
    # HR@10: ranks 0, 3, 9 are < 10 -> 3/4
    # NDCG@10: (1/log2(2) + 1/log2(5) + 0 + 1/log2(11)) / 4 = (1 + 0.430677 + 0.289065) / 4
    # MRR: (1 + 1/4 + 1/13 + 1/10) / 4; MRR@10 drops the 1/13
    out = full_ranking_metrics(ranks, ks=(10,))
    assert out["hr@10"] == 0.75
    assert out["ndcg@10"] == pytest.approx((1 + 0.430677 + 0.289065) / 4, abs=1e-6)
    assert out["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 13 + 1 / 10) / 4)
    assert mrr(ranks, 10) == pytest.approx((1 + 1 / 4 + 1 / 10) / 4)
    assert ndcg(ranks) == pytest.approx(
        (1 + 1 / math.log2(5) + 1 / math.log2(14) + 1 / math.log2(11)) / 4
    )
    assert math.isnan(hit_rate([], 10)) and math.isnan(mrr([]))


def test_rank_of_targets_in_item_and_user_chunks():
    rng = np.random.default_rng(5)
    users, items = 40, 300
    scores = np.round(rng.normal(size=(users, items)), 1).astype(np.float32)  # with ties
    targets = rng.integers(0, items, users)
    exclude = rng.random((users, items)) < 0.1
    exclude[np.arange(users), targets] = False
    whole = rank_of_targets(scores, targets, exclude)
    target_scores = scores[np.arange(users), targets]
    chunked = sum(
        rank_of_targets(
            scores[:, start:stop],
            targets,
            exclude[:, start:stop],
            item_offset=start,
            target_scores=target_scores,
        )
        for start, stop in [(0, 7), (7, 150), (150, 299), (299, 300)]
    )
    np.testing.assert_array_equal(chunked, whole)
    by_users = np.concatenate(
        [rank_of_targets(scores[s], targets[s], exclude[s]) for s in (slice(0, 13), slice(13, 40))]
    )
    np.testing.assert_array_equal(by_users, whole)
    # Independent count: items strictly above or tied with the target, not excluded.
    above = ((scores >= target_scores[:, None]) & ~exclude).sum(axis=1) - 1  # minus the target
    np.testing.assert_array_equal(whole, above)


def test_full_ranking_matches_keras_rs():
    # With a single relevant item per list, keras-rs' NDCG (gain 2^1 - 1 = 1, discount
    # 1/log2(1-based rank + 1), ideal DCG 1), MRR (1 / 1-based rank) and Recall@k (the
    # one relevant item found in the top k or not) are exactly 1/log2(rank + 2),
    # 1/(rank + 1) and [rank < k] on our 0-based ranks. keras-rs sorts masked items last,
    # which is our exclusion; continuous random scores have no ties to break.
    import keras_rs

    rng = np.random.default_rng(6)
    users, items = 16, 50
    scores = rng.normal(size=(users, items)).astype(np.float32)
    targets = rng.integers(0, items, users)
    exclude = rng.random((users, items)) < 0.3
    exclude[np.arange(users), targets] = False
    labels = np.zeros((users, items), np.float32)
    labels[np.arange(users), targets] = 1.0
    ranks = rank_of_targets(scores, targets, exclude)
    for metric, expected in [
        (keras_rs.metrics.NDCG(k=10), ndcg(ranks, 10)),
        (keras_rs.metrics.MeanReciprocalRank(), mrr(ranks)),
        (keras_rs.metrics.RecallAtK(k=10), hit_rate(ranks, 10)),
    ]:
        metric.update_state({"labels": labels, "mask": ~exclude}, scores)
        assert float(metric.result()) == pytest.approx(expected, abs=1e-6), metric.name
    assert 0.0 < hit_rate(ranks, 10) < 1.0  # the case exercises both outcomes


# --------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    "fn, args, kwargs, message",
    [
        (candidate_ranks, ([0.1], [0.2]), {}, r"`positive_scores` must be \[U\] and `negative"),
        (candidate_ranks, ([0.1], [[0.2]], [[True, False]]), {}, "`negative_mask` must have"),
        (candidate_ranks, ([0.1], [[NAN]]), {}, "Scores must not be NaN"),
        (candidate_ranks, ([0.1], [[0.2]]), {"ties": "random"}, "`ties` must be one of"),
        (candidate_metrics, ([0.1], [[0.2]]), {"k": 0}, "`k` must be a positive integer"),
        (
            candidate_metrics,
            ([0.1], [[0.2]]),
            {"gauc_min_negatives": 0},
            "`gauc_min_negatives` must be a positive integer",
        ),
        (rank_of_targets, (SCORES, [2]), {}, r"`scores` must be \[U, n\] and `targets` \[U\]"),
        (rank_of_targets, (SCORES, [2.0, 5.0]), {}, "`targets` must be integer item indices"),
        (rank_of_targets, (SCORES, TARGETS, ~EXCLUDE), {}, "`exclude` must not mark a user's"),
        (rank_of_targets, (SCORES, TARGETS, EXCLUDE[:, :3]), {}, "`exclude` must have the shape"),
        (
            rank_of_targets,
            (SCORES[:, :3], TARGETS),
            {"item_offset": 0},
            "Every target must lie in this chunk",
        ),
        (
            rank_of_targets,
            (SCORES, TARGETS),
            {"target_scores": [0.1]},
            "`target_scores` must have the shape of `targets`",
        ),
        (
            rank_of_targets,
            (np.where(EXCLUDE, NAN, SCORES) * np.nan, TARGETS),
            {},
            "Scores must not be NaN",
        ),
        (hit_rate, ([0, -1], 10), {}, "`ranks` must be a 1-D array of 0-based ranks"),
        (ndcg, ([0, 1], 0), {}, "`k` must be a positive integer"),
        (mrr, ([[0, 1]],), {}, "`ranks` must be a 1-D array"),
    ],
)
def test_validation(fn, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fn(*args, **kwargs)


def test_nan_scores_of_excluded_items_are_allowed():
    scores = np.where(EXCLUDE, np.nan, SCORES)
    np.testing.assert_array_equal(rank_of_targets(scores, TARGETS, EXCLUDE), [2, 0])
