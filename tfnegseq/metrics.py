"""Offline ranking metrics in numpy: AUC, group AUC (GAUC) and log loss.

All three are plain numpy (no TensorFlow) so that evaluation jobs and notebooks can use
them on exported predictions. AUC is the rank statistic (Mann-Whitney U) with tied
scores given their average rank, which equals the trapezoidal ROC area that
`sklearn.metrics.roc_auc_score` computes.
"""

from __future__ import annotations

import numpy as np


def _check_binary(labels, scores):
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            "`labels` and `scores` must be 1-D and of the same length. "
            f"Received: labels.shape={labels.shape}, scores.shape={scores.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"`labels` must be 0 or 1. Received: {np.unique(labels)[:10]}")
    return labels.astype(np.int64), scores


def _grouped_auc(groups, labels, scores):
    """Per-group AUC, positives and negatives: arrays over the unique groups."""
    _, group = np.unique(groups, return_inverse=True)
    group = group.reshape(-1)
    num_groups = int(group.max()) + 1 if group.size else 0
    order = np.lexsort((scores, group))  # by group, then by score
    sorted_group, sorted_score = group[order], scores[order]
    n = len(order)
    # Tie blocks: runs of equal (group, score); each element gets the block's mean rank.
    new_block = np.ones(n, dtype=bool)
    new_block[1:] = (sorted_group[1:] != sorted_group[:-1]) | (
        sorted_score[1:] != sorted_score[:-1]
    )
    block_id = np.cumsum(new_block) - 1
    block_start = np.flatnonzero(new_block)
    block_end = np.append(block_start[1:], n) - 1
    mean_position = (block_start + block_end) / 2.0  # 0-based, within the whole array
    group_start = np.searchsorted(sorted_group, np.arange(num_groups), side="left")
    rank = mean_position[block_id] - group_start[sorted_group] + 1.0  # 1-based, in group
    positive = labels[order] == 1
    num_pos = np.bincount(sorted_group, weights=positive, minlength=num_groups)
    num_neg = np.bincount(sorted_group, weights=~positive, minlength=num_groups)
    rank_sum = np.bincount(sorted_group, weights=rank * positive, minlength=num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)
    return auc, num_pos, num_neg


def auc(labels, scores) -> float:
    """Area under the ROC curve, from ranks with ties averaged.

    Args:
        labels: array-like `[N]` of 0/1.
        scores: array-like `[N]` of predicted scores (any monotone scale).

    Returns:
        The AUC as a float; nan when `labels` holds a single class.
    """
    labels, scores = _check_binary(labels, scores)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    value, _, _ = _grouped_auc(np.zeros_like(labels), labels, scores)
    return float(value[0])


def gauc(user_ids, labels, scores) -> float:
    """Group AUC: per-user AUC averaged with each user's impression count as weight.

    `GAUC = sum_u n_u AUC_u / sum_u n_u` over the users that have both a positive and a
    negative impression; users with a single label class are skipped.

    Args:
        user_ids: array-like `[N]` of user ids (any sortable type).
        labels: array-like `[N]` of 0/1.
        scores: array-like `[N]` of predicted scores.

    Returns:
        The GAUC as a float; nan when no user has both classes.
    """
    labels, scores = _check_binary(labels, scores)
    user_ids = np.asarray(user_ids)
    if user_ids.shape != labels.shape:
        raise ValueError(
            "`user_ids` must have the shape of `labels`. "
            f"Received: user_ids.shape={user_ids.shape}, labels.shape={labels.shape}"
        )
    if labels.size == 0:
        return float("nan")
    value, num_pos, num_neg = _grouped_auc(user_ids, labels, scores)
    valid = (num_pos > 0) & (num_neg > 0)
    if not valid.any():
        return float("nan")
    weight = (num_pos + num_neg)[valid]
    return float(np.sum(weight * value[valid]) / np.sum(weight))


def logloss(labels, probs, eps=1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to `[eps, 1 - eps]`.

    Args:
        labels: array-like `[N]` of targets in [0, 1] (usually 0/1).
        probs: array-like `[N]` of predicted probabilities of label 1.
        eps: float. Clipping bound that keeps the log finite. Defaults to 1e-7.

    Returns:
        The mean log loss as a float.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != probs.shape or labels.size == 0:
        raise ValueError(
            "`labels` and `probs` must be 1-D, non-empty and of the same length. "
            f"Received: labels.shape={labels.shape}, probs.shape={probs.shape}"
        )
    if not 0.0 < eps < 0.5:
        raise ValueError(f"`eps` must be in (0, 0.5). Received: eps={eps}")
    probs = np.clip(probs, eps, 1.0 - eps)
    return float(-np.mean(labels * np.log(probs) + (1.0 - labels) * np.log1p(-probs)))
