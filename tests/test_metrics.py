"""Tests for tfnegseq.metrics (numpy AUC, GAUC, log loss) against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from tfnegseq.metrics import auc, gauc, logloss


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [1, 2, 6])  # 1 decimal: many ties
def test_auc_matches_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * labels, decimals)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_special_cases():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc([True, False], [2.0, -3.0]) == 1.0
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([], []))


def test_gauc_hand_worked_example():
    # user a: positive 0.9 beats negative 0.3 and ties negative 0.9 -> 1.5 / 2 = 0.75, n = 3
    # user b: positive 0.1 beats none of (0.2, 0.5), positive 0.8 beats both -> 2/4, n = 4
    # user c: positives only -> skipped
    users = ["a", "b", "a", "c", "b", "b", "a", "c", "b"]
    labels = [1, 0, 0, 1, 1, 1, 0, 1, 0]
    scores = [0.9, 0.2, 0.3, 0.4, 0.1, 0.8, 0.9, 0.6, 0.5]
    assert gauc(users, labels, scores) == pytest.approx((3 * 0.75 + 4 * 0.5) / 7)


def test_gauc_matches_per_user_sklearn():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 40, 2000)
    labels = (rng.random(2000) < 0.3).astype(int)
    scores = np.round(rng.random(2000) + 0.2 * labels, 1)
    total = weight = 0.0
    for user in np.unique(users):
        sel = users == user
        if labels[sel].min() != labels[sel].max():
            total += sel.sum() * roc_auc_score(labels[sel], scores[sel])
            weight += sel.sum()
    assert gauc(users, labels, scores) == pytest.approx(total / weight, abs=1e-12)
    permutation = rng.permutation(2000)
    assert gauc(users[permutation], labels[permutation], scores[permutation]) == pytest.approx(
        total / weight, abs=1e-12
    )


def test_gauc_single_user_is_auc_and_nan_without_valid_users():
    rng = np.random.default_rng(4)
    labels, scores = rng.integers(0, 2, 100), rng.random(100)
    assert gauc(np.zeros(100), labels, scores) == pytest.approx(auc(labels, scores))
    assert math.isnan(gauc([1, 1, 2], [1, 1, 0], [0.3, 0.4, 0.5]))


@pytest.mark.parametrize("seed", [0, 1])
def test_logloss_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    probs = rng.uniform(0.01, 0.99, 300)
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs), rel=1e-12)


def test_logloss_clips():
    value = logloss([1, 0], [0.0, 1.0], eps=1e-7)
    assert value == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert logloss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7), rel=1e-6)


@pytest.mark.parametrize(
    "fn, args, message",
    [
        (auc, ([0, 1], [0.1]), "`labels` and `scores` must be 1-D and of the same length"),
        (auc, ([0, 2], [0.1, 0.2]), "`labels` must be 0 or 1"),
        (gauc, ([1], [0, 1], [0.1, 0.2]), "`user_ids` must have the shape of `labels`"),
        (logloss, ([0, 1], [0.5]), "`labels` and `probs` must be 1-D, non-empty"),
        (logloss, ([0, 1], [0.5, 0.5], 0.0), r"`eps` must be in \(0, 0.5\). Received: eps=0.0"),
    ],
)
def test_validation(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)
