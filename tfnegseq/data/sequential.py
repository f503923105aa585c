"""Training and evaluation windows of the sequential task (SINE §4, §5.1): the reference.

Pure numpy, one user at a time, written for clarity: `tfnegseq.data.sequential_input`
computes the same windows with vectorised TensorFlow ops for a batch of users, and the
tests check that the two agree.

Input: one example of `<samples_dir>/sequences/` (`samples.build_sequential_sample`) as
a dict of numpy arrays: `seq_item_id`, `seq_polarity` (+1 positive, -1 passive
negative; 0, a neutral event, is accepted too although the Beam job drops neutrals),
`valid_index`, `valid_item_id`, `test_item_id`. The sequence holds, in timeline order,
the events strictly before the test target (the user's last positive); the validation
target (the second-to-last positive) sits at `valid_index`.

Let p_1 .. p_n be the positives of `seq[:valid_index]` (the training positives).

    train  inputs p_1 .. p_{n-1}, targets p_2 .. p_n (next-positive prediction, SASRec
           style); each target's nearest passive negative (SINE's L2 negative) and
           each input's (the sub-interest assignment of input positions).
    valid  inputs p_1 .. p_n; target the validation positive; candidates the passive
           negatives strictly between p_n and it.
    test   inputs p_1 .. p_n and the validation positive; target the test positive;
           candidates the passive negatives strictly after the validation positive.

All id lists keep the most recent `max_len` values, oldest first, left-padded with
`PAD_ID` (the tf.data input maps them to embedding rows, padding to row 0).

Leakage: a training window holds nothing from the validation target onward; no input
holds anything from the test target onward (the sample holds nothing after it).

Nearest passive negative of a positive at position j (`negative_rule`):
    "previous" (default): the event at j - 1 when it is a passive negative, else none.
        The official code's rule (`utils/dataset.py`: `neg_fdbk` is `seq_item[idx - 1]`
        when `seq_feedback[idx - 1] == 0`, else 0), so SINE is reproduced as published.
    "window": the latest passive negative since the previous positive, whatever lies
        in between. It differs from "previous" only when a neutral event separates
        that negative from the positive; the Beam job drops neutral events from
        `seq_*`, so on its samples the two rules give the same windows.
The first event of the sample has no nearest negative: anything before it was cut off
by `samples.max_sequence`.

Candidates (the paper's protocol ranks the target among the user's skips): the
official code (`utils/preprocess.py`) gives the validation user every skip between
p_n and the *test* positive, so the skips between the validation and test positives
are candidates of both splits, and validation sees skips after its own target. Here
each skip belongs to exactly one split: valid takes those between p_n and the
validation positive, test those after it. A skip of the target's own item is no
negative for it and is dropped; when there are more than `max_candidates`, the most
recent are kept.

Exclusion (full-ranking protocol): `exclude` lists the distinct positive items of the
split's inputs, i.e. what the user already engaged with, except the target's item:
when the target repeats an earlier positive, it is still ranked. It covers every input
positive of the sample, including those older than the kept `max_len` (the model sees
the last `max_len`; the standard protocol excludes the user's whole history). What lies
before the sample's window (`samples.max_sequence` events) is not in the sample: set
`max_sequence` to cover the users' histories (the SINE configs do) for an exact
exclusion. In the train split, `exclude` is every training positive (p_1 .. p_n): the
items the random negatives must avoid.

Few positives: the Beam job keeps users with at least 3 positives, but the sample
window may hold fewer training positives. With n < 2 the train window is empty (all
`PAD_ID`, mask all 0: the user adds nothing to the loss); with n = 0 the valid inputs
are empty, and candidates are every skip before the validation target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfnegseq.schema import PAD_ID

NEGATIVE_RULES = ("previous", "window")
SPLITS = ("train", "valid", "test")


def check_negative_rule(negative_rule: str) -> None:
    if negative_rule not in NEGATIVE_RULES:
        raise ValueError(
            f"`negative_rule` must be one of {NEGATIVE_RULES}. Received: "
            f"negative_rule={negative_rule!r}"
        )


def nearest_negative_positions(polarity: np.ndarray, negative_rule: str = "previous"
                               ) -> np.ndarray:
    """For each position j, the position of its nearest passive negative, or -1.

    Defined for every position (the caller reads it at positives). See the module
    docstring for the two rules.
    """
    check_negative_rule(negative_rule)
    pol = np.asarray(polarity, np.int64)
    out = np.full(len(pol), -1, np.int64)
    for j in range(1, len(pol)):
        if negative_rule == "previous":
            if pol[j - 1] == -1:
                out[j] = j - 1
            continue
        for i in range(j - 1, -1, -1):  # "window": back to the previous positive
            if pol[i] == 1:
                break
            if pol[i] == -1:
                out[j] = i
                break
    return out


def left_pad(values: np.ndarray, max_len: int, pad: int = PAD_ID) -> np.ndarray:
    """The last `max_len` values, oldest first, left-padded with `pad` to `max_len`."""
    values = np.asarray(values, np.int64)[len(values) - min(len(values), max_len):]
    return np.concatenate([np.full(max_len - len(values), pad, np.int64), values])


def _ids(items: np.ndarray, positions: list[int] | np.ndarray) -> np.ndarray:
    pos = np.asarray(positions, np.int64)
    return np.where(pos >= 0, items[np.maximum(pos, 0)], PAD_ID) if len(pos) else pos


def _eval_window(items: np.ndarray, neg_pos: np.ndarray, inputs: list[int], target: int,
                 candidates: list[int], max_len: int, max_candidates: int | None
                 ) -> dict[str, Any]:
    kept = inputs[len(inputs) - min(len(inputs), max_len):]
    candidates = [c for c in candidates if items[c] != target]
    if max_candidates is not None:
        candidates = candidates[len(candidates) - min(len(candidates), max_candidates):]
    # every input positive of the window, also those older than the kept `max_len`
    seen = np.unique(items[np.asarray(inputs, np.int64)]) if inputs else np.zeros(0, np.int64)
    return {
        "inputs": left_pad(items[np.asarray(kept, np.int64)], max_len),
        "input_negatives": left_pad(_ids(items, neg_pos[np.asarray(kept, np.int64)]), max_len),
        "target": np.int64(target),
        "candidates": items[np.asarray(candidates, np.int64)],
        "candidate_positions": np.asarray(candidates, np.int64),
        "input_positions": np.asarray(kept, np.int64),
        "exclude": seen[seen != target],
    }


def user_windows(example: Mapping[str, Any], max_len: int, negative_rule: str = "previous",
                 max_candidates: int | None = None) -> dict[str, dict[str, Any]]:
    """The train, valid and test windows of one user's sequential example.

    Args:
        example: mapping. One parsed example: `seq_item_id`, `seq_polarity` (lists),
            `valid_index`, `valid_item_id`, `test_item_id` (scalars or 1-element lists).
        max_len: int. Length of every input / target list (most recent kept).
        negative_rule: str. "previous" or "window" (module docstring). Defaults to
            "previous".
        max_candidates: int or None. Keep at most this many (most recent) candidates
            per evaluation split; None keeps all. Defaults to None.

    Returns:
        {"train": {...}, "valid": {...}, "test": {...}}, int64 numpy values:
        train: `inputs`, `input_negatives`, `targets`, `target_negatives` [max_len],
            `mask` [max_len] (1 where a target exists), `exclude` (every training
            positive, distinct, sorted).
        valid / test: `inputs`, `input_negatives` [max_len], `target` (scalar),
            `candidates` [<= max_candidates] (oldest first), `exclude` (distinct
            input positives of the sample, the ones beyond `max_len` included, except
            the target's item, sorted), and the positions in
            `seq_*` of the candidates and of the kept inputs (`candidate_positions`,
            `input_positions`; for checks).

    Raises:
        ValueError: `max_len` < 1, an unknown `negative_rule`, or an example whose
            `valid_index` does not point at a positive of `valid_item_id`.
    """
    if max_len < 1:
        raise ValueError(f"`max_len` must be >= 1. Received: max_len={max_len}")
    if max_candidates is not None and max_candidates < 0:
        raise ValueError(f"`max_candidates` must be >= 0. Received: max_candidates={max_candidates}")
    check_negative_rule(negative_rule)
    items = np.asarray(example["seq_item_id"], np.int64).ravel()
    pol = np.asarray(example["seq_polarity"], np.int64).ravel()
    k = int(np.asarray(example["valid_index"]).ravel()[0])
    valid_item = int(np.asarray(example["valid_item_id"]).ravel()[0])
    test_item = int(np.asarray(example["test_item_id"]).ravel()[0])
    if not (0 <= k < len(items)) or pol[k] != 1 or items[k] != valid_item:
        raise ValueError(
            f"`valid_index` {k} must point at the validation positive {valid_item} of the "
            f"sequence (length {len(items)})"
        )
    neg_pos = nearest_negative_positions(pol, negative_rule)
    train_pos = [j for j in range(k) if pol[j] == 1]

    inputs, targets = train_pos[:-1], train_pos[1:]
    target_ids = left_pad(items[np.asarray(targets, np.int64)], max_len)
    train = {
        "inputs": left_pad(items[np.asarray(inputs, np.int64)], max_len),
        "input_negatives": left_pad(_ids(items, neg_pos[np.asarray(inputs, np.int64)]), max_len),
        "targets": target_ids,
        "target_negatives": left_pad(
            _ids(items, neg_pos[np.asarray(targets, np.int64)]), max_len),
        "mask": (target_ids != PAD_ID).astype(np.int64),
        "exclude": np.unique(items[np.asarray(train_pos, np.int64)]),
    }
    last_train = train_pos[-1] if train_pos else -1
    valid = _eval_window(
        items, neg_pos, train_pos, valid_item,
        [j for j in range(last_train + 1, k) if pol[j] == -1], max_len, max_candidates,
    )
    test = _eval_window(
        items, neg_pos, [j for j in range(k + 1) if pol[j] == 1], test_item,
        [j for j in range(k + 1, len(items)) if pol[j] == -1], max_len, max_candidates,
    )
    return {"train": train, "valid": valid, "test": test}


def resolve_buckets(max_len: int, buckets: Sequence[int] | None) -> list[int]:
    """The bucket lengths of length grouping: `buckets` (ascending, each in
    [1, max_len]) with `max_len` appended when missing; None: max_len / 8, / 4, / 2 and
    max_len (rounded up, distinct); []: no grouping (returns [])."""
    if buckets is None:
        return sorted({-(-max_len // d) for d in (8, 4, 2)} | {max_len})
    out = [int(b) for b in buckets]
    if not out:
        return []
    ascending = all(a < b for a, b in zip(out, out[1:], strict=False))
    if not ascending or any(b < 1 or b > max_len for b in out):
        raise ValueError(f"length buckets must be strictly ascending, each in [1, "
                         f"max_len={max_len}]. Received: {list(buckets)}")
    return out if out[-1] == max_len else [*out, max_len]
