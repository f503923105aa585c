"""Offline ranking metrics in numpy: AUC, group AUC (GAUC), log loss, next-item ranking.

All are plain numpy (no TensorFlow) so that evaluation jobs and notebooks can use
them on exported predictions. AUC is the rank statistic (Mann-Whitney U) with tied
scores given their average rank, which equals the trapezoidal ROC area that
`sklearn.metrics.roc_auc_score` computes.

Next-item evaluation has two protocols:
- SINE's (RecSys 2023, section 5.1): per user one held-out positive scored against
  that user's passive negatives (a ragged set, padded to `[U, C]` with a mask):
  `candidate_ranks` and `candidate_metrics` (AUC, GAUC, NDCG@k).
- Full ranking over the catalogue: `rank_of_targets` (chunk by chunk if needed), then
  `hit_rate`, `ndcg`, `mrr` or `full_ranking_metrics` on the ranks.

Ranks are 0-based (0 = the top). Ties with the positive are resolved by `ties`:
`"pessimistic"` (the default: every tied item is ranked above the positive, so
constant scores earn nothing), `"optimistic"` (none is), or `"average"` (half of them
are: the mean position over random tie orders; ranks may then be `x.5`).
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


# --------------------------------------------------------------------------------------
# Next-item evaluation: ranks of one target per user.

TIES = {"pessimistic": 1.0, "optimistic": 0.0, "average": 0.5}


def _tie_weight(ties) -> float:
    if ties not in TIES:
        raise ValueError(f"`ties` must be one of {tuple(TIES)}. Received: ties={ties!r}")
    return TIES[ties]


def _check_k(k, name="k"):
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={k!r}")


def _mean(values) -> float:
    return float(np.mean(values)) if np.size(values) else float("nan")


def _check_candidates(positive_scores, negative_scores, negative_mask):
    positive = np.asarray(positive_scores, dtype=np.float64)
    negative = np.asarray(negative_scores, dtype=np.float64)
    if positive.ndim != 1 or negative.ndim != 2 or negative.shape[0] != positive.shape[0]:
        raise ValueError(
            "`positive_scores` must be [U] and `negative_scores` [U, C]. Received: "
            f"positive_scores.shape={positive.shape}, negative_scores.shape={negative.shape}"
        )
    if negative_mask is None:
        mask = np.ones(negative.shape, dtype=bool)
    else:
        mask = np.asarray(negative_mask)
        if mask.shape != negative.shape:
            raise ValueError(
                "`negative_mask` must have the shape of `negative_scores`. Received: "
                f"negative_mask.shape={mask.shape}, negative_scores.shape={negative.shape}"
            )
        mask = mask.astype(bool)
    if np.isnan(positive).any() or np.isnan(negative[mask]).any():
        raise ValueError("Scores must not be NaN; mask padded negatives out with `negative_mask`.")
    return positive, negative, mask


def candidate_ranks(positive_scores, negative_scores, negative_mask=None, *, ties="pessimistic"):
    """0-based rank of each user's positive among it and the user's negatives.

    `rank_u = #{valid j: s_j > s_u} + w * #{valid j: s_j == s_u}` with `w` = 1, 0 or 1/2
    for `ties` = "pessimistic", "optimistic" or "average".

    Args:
        positive_scores: array-like `[U]`, the score of each user's held-out positive.
        negative_scores: array-like `[U, C]`, the scores of its negatives, padded.
        negative_mask: optional bool array-like `[U, C]`, True for a real negative.
            Defaults to `None` (all real).
        ties: str. How negatives tied with the positive count. Defaults to
            `"pessimistic"`.

    Returns:
        float64 array `[U]` of ranks (whole numbers unless `ties="average"`).
    """
    weight = _tie_weight(ties)
    positive, negative, mask = _check_candidates(positive_scores, negative_scores, negative_mask)
    above = np.sum(mask & (negative > positive[:, None]), axis=1)
    tied = np.sum(mask & (negative == positive[:, None]), axis=1)
    return above + weight * tied


def candidate_metrics(
    positive_scores,
    negative_scores,
    negative_mask=None,
    *,
    k=2,
    ties="pessimistic",
    gauc_min_negatives=1,
) -> dict[str, float]:
    """SINE's protocol (section 5.1): one positive per user against its passive negatives.

    - `auc`: pooled over every scored row of every user (each positive labelled 1, each
      real negative 0), ties averaged, as `sklearn.metrics.roc_auc_score`.
    - `gauc`: the unweighted mean over users of the per-user AUC
      `(#{s_j < s_u} + #{s_j == s_u} / 2) / n_u`, over users with at least
      `gauc_min_negatives` negatives (the official code averages per user likewise, and
      keeps users with >= 2 negatives: pass 2 to reproduce it). `gauc()` above weights
      users by impression count instead (here that would be `1 + n_u`).
    - `ndcg@k`: `1 / log2(rank + 2)` when `rank < k`, else 0, with the rank of
      `candidate_ranks` under `ties`; mean over users with at least one negative.
    - `ndcg_no_cutoff`: `1 / log2(rank + 2)` at any rank, same users. This is what the
      official code reports as NDCG_2 (its `ndcg_custom` has no cutoff).

    Users without negatives count in `auc` only (their positive is a scored row), as
    in the official code. AUC and GAUC average ties whatever `ties` says.

    Args:
        positive_scores: array-like `[U]`.
        negative_scores: array-like `[U, C]`, padded; C may be 0.
        negative_mask: optional bool array-like `[U, C]`, True for a real negative.
            Defaults to `None` (all real).
        k: int. The NDCG cutoff. Defaults to 2.
        ties: str. Tie rule of the NDCG ranks. Defaults to `"pessimistic"`.
        gauc_min_negatives: int. Fewest negatives for a user to count in GAUC.
            Defaults to 1.

    Returns:
        A dict with `auc`, `gauc`, `ndcg@{k}`, `ndcg_no_cutoff` (nan where no user
        qualifies), and the counts `num_users`, `num_ranked_users` (>= 1 negative),
        `num_gauc_users`.
    """
    _check_k(k)
    _check_k(gauc_min_negatives, "gauc_min_negatives")
    positive, negative, mask = _check_candidates(positive_scores, negative_scores, negative_mask)
    ranks = candidate_ranks(positive, negative, mask, ties=ties)
    num_negatives = mask.sum(axis=1)
    labels = np.concatenate([np.ones(len(positive)), np.zeros(int(num_negatives.sum()))])
    pooled = auc(labels, np.concatenate([positive, negative[mask]]))
    below = np.sum(mask & (negative < positive[:, None]), axis=1)
    tied = np.sum(mask & (negative == positive[:, None]), axis=1)
    in_gauc = num_negatives >= gauc_min_negatives
    user_auc = (below[in_gauc] + 0.5 * tied[in_gauc]) / num_negatives[in_gauc]
    ranked = num_negatives > 0
    gain = 1.0 / np.log2(ranks[ranked] + 2.0)
    return {
        "auc": pooled,
        "gauc": _mean(user_auc),
        f"ndcg@{k}": _mean(np.where(ranks[ranked] < k, gain, 0.0)),
        "ndcg_no_cutoff": _mean(gain),
        "num_users": len(positive),
        "num_ranked_users": int(ranked.sum()),
        "num_gauc_users": int(in_gauc.sum()),
    }


def rank_of_targets(
    scores, targets, exclude=None, *, ties="pessimistic", item_offset=0, target_scores=None
):
    """Full-ranking rank of each user's target item among the items not excluded.

    Counts, per user, the items of `scores` other than the target and not in `exclude`
    that score above the target (plus `w` times those tied with it, `w` as in
    `candidate_ranks`). Over the whole catalogue this is the target's 0-based rank.

    Memory: the counts add up over item chunks, so a caller can score the catalogue
    chunk by chunk, pass each chunk with its `item_offset` (and the targets' scores in
    `target_scores`, since a target lies in one chunk only), and sum the results; user
    chunks (rows) are simply concatenated.

    Args:
        scores: array-like `[U, n]`, scores of items `item_offset .. item_offset + n - 1`.
        targets: int array-like `[U]`, each user's target item (catalogue index).
        exclude: optional bool array-like `[U, n]`, True for items not to rank (the
            user's earlier positives, padding ids). Must not mark a target. Defaults to
            `None`.
        ties: str. `"pessimistic"`, `"optimistic"` or `"average"`. Defaults to
            `"pessimistic"`.
        item_offset: int. Catalogue index of the first column. Defaults to 0.
        target_scores: optional array-like `[U]`, the targets' scores, from the same
            scoring (same dtype) as `scores`. Needed when a target lies outside this
            chunk. Defaults to `None` (read from `scores`).

    Returns:
        float64 array `[U]`: ranks, or this chunk's share of them.
    """
    weight = _tie_weight(ties)
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(
            "`scores` must be [U, n] and `targets` [U]. Received: "
            f"scores.shape={scores.shape}, targets.shape={targets.shape}"
        )
    if targets.size and not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"`targets` must be integer item indices. Received: {targets.dtype}")
    local = targets.astype(np.int64) - int(item_offset)
    rows = np.flatnonzero((local >= 0) & (local < scores.shape[1]))
    if target_scores is None:
        if len(rows) != len(targets):
            raise ValueError(
                "Every target must lie in this chunk of items, or pass `target_scores`."
            )
        target = scores[rows, local[rows]]
    else:
        target = np.asarray(target_scores)
        if target.shape != targets.shape:
            raise ValueError(
                "`target_scores` must have the shape of `targets`. Received: "
                f"target_scores.shape={target.shape}, targets.shape={targets.shape}"
            )
    counted = np.ones(scores.shape, dtype=bool)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != scores.shape:
            raise ValueError(
                "`exclude` must have the shape of `scores`. Received: "
                f"exclude.shape={exclude.shape}, scores.shape={scores.shape}"
            )
        if exclude[rows, local[rows]].any():
            raise ValueError("`exclude` must not mark a user's target item.")
        counted = ~exclude
    counted[rows, local[rows]] = False  # the target itself
    if np.issubdtype(scores.dtype, np.floating) and (
        np.isnan(target).any() or (np.isnan(scores) & counted).any()
    ):
        raise ValueError("Scores must not be NaN; exclude the items that have none.")
    above = np.sum((scores > target[:, None]) & counted, axis=1)
    tied = np.sum((scores == target[:, None]) & counted, axis=1)
    return above + weight * tied


def _check_ranks(ranks):
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1 or np.isnan(ranks).any() or (ranks < 0).any():
        raise ValueError(
            f"`ranks` must be a 1-D array of 0-based ranks (>= 0). Received: shape={ranks.shape}"
        )
    return ranks


def hit_rate(ranks, k) -> float:
    """HR@k: the share of users whose target ranks in the top k (`rank < k`).

    Args:
        ranks: array-like `[U]` of 0-based ranks (e.g. from `rank_of_targets`).
        k: int. The cutoff.

    Returns:
        The mean as a float; nan for no users.
    """
    _check_k(k)
    ranks = _check_ranks(ranks)
    return _mean(ranks < k)


def _gain_at(ranks, k, gain) -> float:
    """Mean of `gain(rank)` over users, 0 where `rank >= k` (no cutoff for k None)."""
    if k is not None:
        _check_k(k)
    ranks = _check_ranks(ranks)
    values = gain(ranks)
    return _mean(values if k is None else np.where(ranks < k, values, 0.0))


def ndcg(ranks, k=None) -> float:
    """NDCG@k with one relevant item: `1 / log2(rank + 2)` if `rank < k` else 0.

    With one relevant item the ideal DCG is 1, so NDCG is the DCG of the target.

    Args:
        ranks: array-like `[U]` of 0-based ranks.
        k: optional int. The cutoff. Defaults to `None` (no cutoff).

    Returns:
        The mean as a float; nan for no users.
    """
    return _gain_at(ranks, k, lambda r: 1.0 / np.log2(r + 2.0))


def mrr(ranks, k=None) -> float:
    """Mean reciprocal rank: `1 / (rank + 1)`, 0 beyond the cutoff `k` if one is given.

    Args:
        ranks: array-like `[U]` of 0-based ranks.
        k: optional int. The cutoff. Defaults to `None` (no cutoff).

    Returns:
        The mean as a float; nan for no users.
    """
    return _gain_at(ranks, k, lambda r: 1.0 / (r + 1.0))


def full_ranking_metrics(ranks, ks=(10,)) -> dict[str, float]:
    """`hr@k` and `ndcg@k` for every k in `ks`, and `mrr` (no cutoff), from ranks."""
    out = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
    out["mrr"] = mrr(ranks)
    return out
