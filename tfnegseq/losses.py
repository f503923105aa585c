"""SINE's training losses (RecSys 2023, eq. 15-16): BPR pairs and distance correlation.

`bpr_loss` is eq. (15), `-ln sigma(y(u, i) - y(u, j))` over (positive, negative) score
pairs: `L_1` with sampled negatives, `L_2` with observed passive negatives.
`distance_correlation` is `L_dis = dCor(Z)` over the sub-interest prototypes, and
`sine_loss` the weighted sum of eq. (16).

All three are `keras.ops` only (any backend, under `jit_compile`) and compute in
float32 whatever the input dtype (bfloat16 scores are cast up first).
"""

from __future__ import annotations

from collections.abc import Sequence

from keras import ops

REDUCTIONS = ("mean", "sum", "none")
# Guards of `distance_correlation`; see its docstring.
DVAR_EPSILON = 1e-12
DCOR_EPSILON = 1e-8


def bpr_loss(positive_scores, negative_scores, mask=None, reduction="mean"):
    """Bayesian personalised ranking loss, SINE eq. (15).

    Per pair `softplus(-(y_i - y_j))`, which equals `-ln sigma(y_i - y_j)` but stays
    finite and exact for large score differences (`-log(sigmoid(x))` underflows to
    `inf` near x = -104 in float32). The two score tensors broadcast against each other,
    e.g. `[B, 1]` positives against `[B, C]` negatives. Masked pairs contribute nothing,
    to the value or the gradient, even when their scores are `inf` or NaN (padding).

    The paper writes sums; the official code (and `reduction="mean"`) takes the mean
    over the unmasked pairs.

    Args:
        positive_scores: tensor. Scores `y(u, i)` of the positive items.
        negative_scores: tensor. Scores `y(u, j)`, broadcastable with `positive_scores`.
        mask: optional boolean tensor broadcastable with the pair shape; `True` marks
            a real pair. Defaults to `None` (every pair counts).
        reduction: str. `"mean"` over the unmasked pairs (0 when there are none),
            `"sum"`, or `"none"` (per pair, 0 where masked). Defaults to `"mean"`.

    Returns:
        A float32 scalar, or the float32 per-pair losses for `reduction="none"`.

    Example:
        bpr_loss([[2.0], [0.5]], [[1.0, 3.0], [0.0, 0.0]], mask=[[True, True], [True, False]])
    """
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {REDUCTIONS}. Received: reduction={reduction!r}"
        )
    difference = ops.subtract(
        ops.cast(positive_scores, "float32"), ops.cast(negative_scores, "float32")
    )
    if mask is None:
        losses = ops.softplus(ops.negative(difference))
        if reduction == "mean":
            return ops.mean(losses)
        return ops.sum(losses) if reduction == "sum" else losses
    mask = ops.cast(mask, "bool")
    # Double `where`: masked differences become 0 before the softplus, so an inf or NaN
    # score in a padded slot cannot reach the value or (as 0 * NaN) the gradient.
    difference = ops.where(mask, difference, ops.zeros_like(difference))
    losses = ops.where(mask, ops.softplus(ops.negative(difference)), 0.0)
    if reduction == "none":
        return losses
    total = ops.sum(losses)
    if reduction == "sum":
        return total
    count = ops.sum(ops.cast(ops.broadcast_to(mask, ops.shape(losses)), "float32"))
    return total / ops.maximum(count, 1.0)


def distance_correlation(prototypes):
    """Sum of the pairwise distance correlations of the prototypes, SINE's `L_dis`.

    Each prototype `z_k` (a row, `[d]`) is read as `d` scalar observations, and the
    sample distance correlation (Szekely et al. 2007; the definition DGCF uses) of every
    pair `k < l` is summed:

        a_k[m, n] = |z_k[m] - z_k[n]|                                     # [d, d]
        A_k = a_k - row means - column means + grand mean          (double-centred)
        dCov2(k, l) = mean(A_k * A_l)           (V-statistic, >= 0; dVar2(k) = dCov2(k, k))
        dCor(k, l) = sqrt(max(dCov2(k, l), 0)
                          / (sqrt(dVar2(k) + 1e-12) * sqrt(dVar2(l) + 1e-12)) + 1e-8)
        L_dis = sum_{k < l} dCor(k, l)

    dCor is in [0, 1] (up to the guards), invariant to `z -> a z + b` (a != 0), 1 for
    such pairs and 0 when either vector is constant. The epsilons (`DVAR_EPSILON`,
    `DCOR_EPSILON`) only keep gradients finite: at a constant vector (e.g. zero-init
    prototypes) `sqrt(dVar2)` would have an infinite slope, and `sqrt` of a zero ratio
    too. Their effect on the value: +1e-4 at most where dCor = 0 (sqrt(1e-8)), and a
    relative 1e-12 / dVar2 shrink of the ratio (dVar2 ~ s^2 for entries of spread s, so
    negligible above s ~ 1e-4). `|.|` needs no guard: scalar observations make the
    Euclidean distance an absolute value, whose gradient at 0 is finite.

    The official SINE code (`dcor_custom` in `utils/data_utils.py`) computes the same
    value, `sqrt(dCov2_xy) / sqrt(sqrt(dCov2_xx) * sqrt(dCov2_yy))`, pair by pair, with
    no epsilon: NaN for a constant prototype and an infinite gradient where
    dCov2 = 0. DGCF instead puts 1e-8 inside `sqrt` on the distances and on the
    unnormalised dCov2, which makes its value depend on the scale of the vectors (two
    constant vectors give about 1 there).

    Args:
        prototypes: tensor `[K, d]`, one prototype per row (any float dtype).

    Returns:
        A float32 scalar; 0 for K = 1.

    Example:
        distance_correlation(model.interest_prototypes)  # [K, d] -> scalar
    """
    z = ops.cast(prototypes, "float32")
    if len(z.shape) != 2:
        raise ValueError(f"`prototypes` must be a [K, d] matrix. Received: shape={tuple(z.shape)}")
    num, dim = z.shape
    distances = ops.abs(ops.expand_dims(z, 2) - ops.expand_dims(z, 1))  # [K, d, d]
    centred = (
        distances
        - ops.mean(distances, axis=1, keepdims=True)
        - ops.mean(distances, axis=2, keepdims=True)
        + ops.mean(distances, axis=(1, 2), keepdims=True)
    )  # [K, d, d]
    flat = ops.reshape(centred, (num, dim * dim))  # [K, d*d]
    dcov2 = ops.matmul(flat, ops.transpose(flat)) / float(dim * dim)  # [K, K]
    dvar = ops.sqrt(ops.diagonal(dcov2) + DVAR_EPSILON)  # [K]
    ratio = ops.maximum(dcov2, 0.0) / (ops.expand_dims(dvar, 1) * ops.expand_dims(dvar, 0))
    dcor = ops.sqrt(ratio + DCOR_EPSILON)  # [K, K]
    upper = ops.triu(ops.ones((num, num), dtype="bool"), k=1)  # pairs k < l
    return ops.sum(ops.where(upper, dcor, 0.0))


def sine_loss(l1, l2, l_dis, lambdas: Sequence[float] = (1.0, 1.0, 1.0)):
    """SINE's objective, eq. (16): `lambda_1 L_1 + lambda_2 L_2 + lambda_3 L_dis`.

    The defaults are the official code's (its `dcor_weight`, lambda_3, defaults to 1).

    Args:
        l1: scalar tensor. BPR loss with sampled negatives (`bpr_loss`).
        l2: scalar tensor. BPR loss with passive negatives (`bpr_loss`).
        l_dis: scalar tensor. Prototype distance correlation (`distance_correlation`).
        lambdas: three floats `(lambda_1, lambda_2, lambda_3)`. Defaults to
            `(1.0, 1.0, 1.0)`.

    Returns:
        A float32 scalar.
    """
    if len(lambdas) != 3:
        raise ValueError(f"`lambdas` must hold three weights. Received: lambdas={lambdas}")
    terms = (ops.cast(t, "float32") for t in (l1, l2, l_dis))
    return sum(float(w) * t for w, t in zip(lambdas, terms, strict=True))
