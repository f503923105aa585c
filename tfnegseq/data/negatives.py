"""Generated negatives for logs that hold only positives (pure functions, no Beam).

Taobao UserBehavior (tianchi dataset 649, the CAIN paper's public set) records only
behaviours a user did: pv, cart, fav, buy. CAIN says it generates negatives as ETA and
MIMN do. MIMN's `preprocess/taobao_prepare.py` (`UIC-Paper/MIMN`; ETA's code was not
read) makes CTR samples this way: per user, the behaviours sorted by time; the last
one is the target; with
probability 0.5 its item is replaced by an item drawn uniformly from the catalogue
(redrawn while it equals the true item) and the label is 0, else the label is 1; the
history is every earlier behaviour, of any type (MIMN keeps the latest 200).

Here `samples.negatives` (`tfnegseq.config.sections.NegativesConfig`) does this for any
CTR target, with two deliberate differences, both stricter:

- the drawn item is never any item of the user (MIMN only avoids the replaced item),
  so a generated negative is never an item the user interacts with, earlier or later;
- `mode: add` (the default) keeps every positive and adds `per_positive` negatives
  to it, which CAIN's "every behaviour is an instance" reading needs; `mode: replace`
  is MIMN's coin flip (each label-1 target becomes a label-0 sample with probability
  0.5).

A generated sample has its positive's user, timestamp, order and *identical* history
lists (`pos_*`, `neg_*`, `life_*`): only `item_id`, `item_<f>` (looked up for the new
item in the item table, `PAD_ID` when the table lacks it, never the positive's value)
and `label` differ. The catalogue is every item id of the log's parsed events (the Beam
job computes it once, `beam.ItemCatalogue`). Draws come from a generator seeded by
(`seed`, user id) and are made for every event of the user at once, so the samples do
not depend on batching, thinning or worker, and a retried user gets the same ones.

A user whose events cover the whole catalogue has no item left to draw: sample
building raises for that user, which the Beam job turns into a counted dead letter.

Running it on the Taobao file (`UserBehavior.csv` in `source.path`, no header;
`python -m beam_jobs.build_samples --config taobao.yaml`), MIMN's one sample per user:

    source: {kind: taobao, path: /data/taobao,        # the directory of UserBehavior.csv
             min_timestamp: 1511539200000,            # 2017-11-25 00:00 UTC+8
             max_timestamp: 1512316799999}            # 2017-12-03 23:59:59.999 UTC+8
    rules: {label: ["behavior >= 1"], positive: ["behavior >= 1"], negative: []}
    samples:
      max_history: 200
      lifelong_length: 1000
      before: order                  # MIMN: the history is every earlier row
      item_features: [category]      # item_category, from the log's category_id
      max_targets_per_user: 1        # the last behaviour is the target
      negatives: {kind: uniform, mode: replace, seed: 0}
    split: {kind: temporal, valid_start: 1512144000000, test_start: 1512230400000}

(MIMN puts a user in test when their last behaviour is after the 70 % quantile of the
users' last times; the temporal split above, day 8 valid and day 9 test, is CAIN's.)
For CAIN's "every behaviour is an instance" drop `max_targets_per_user` (or thin with
`target_stride`) and use `negatives: {kind: uniform, per_positive: 1}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfnegseq.config.sections import NegativesConfig


@dataclass(frozen=True)
class NegativeDraws:
    """One user's draws, made for every event of the user (index = timeline position).

    items: int64 [n, per_positive], the generated negatives' items.
    replace: bool [n], mode "replace": whether a label-1 target at that position is
        replaced by its negative (all False in mode "add").
    """

    items: np.ndarray
    replace: np.ndarray


def user_rng(seed: int, user_id: int) -> np.random.Generator:
    """The generator of one user's draws: seeded by (seed, user id) only."""
    return np.random.default_rng([int(seed), int(user_id)])


def check_catalogue(catalogue: np.ndarray) -> np.ndarray:
    """`catalogue` as int64, refused unless strictly increasing (sorted unique ids).
    O(catalogue): callers check a catalogue once, not once per user."""
    cat = np.asarray(catalogue, dtype=np.int64)
    if cat.ndim != 1 or (len(cat) > 1 and not bool(np.all(cat[1:] > cat[:-1]))):
        raise ValueError("the item catalogue must be a 1-D array of sorted unique ids")
    return cat


def _user_positions(catalogue: np.ndarray, user_items: np.ndarray) -> np.ndarray:
    """Sorted catalogue positions of the user's distinct items (those in it):
    O(k log M) for k user items, M catalogue items."""
    uniq = np.unique(np.asarray(user_items, dtype=np.int64))
    pos = np.searchsorted(catalogue, uniq)
    inside = pos < len(catalogue)
    return pos[inside][catalogue[pos[inside]] == uniq[inside]]


def free_items(catalogue: np.ndarray, user_items: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The `r`-th (0-based) catalogue items that are not in `user_items`, vectorised.

    With p_0 < p_1 < ... the catalogue positions of the user's items, the r-th free
    position is r + #{i: p_i - i <= r}. `r` must be < len(catalogue) - #user items.
    """
    pos = _user_positions(catalogue, user_items)
    shifted = pos - np.arange(len(pos))  # non-decreasing
    r = np.asarray(r, dtype=np.int64)
    return catalogue[r + np.searchsorted(shifted, r, side="right")]


def draw_negatives(cfg: NegativesConfig, user_id: int, user_items: np.ndarray,
                   catalogue: np.ndarray) -> NegativeDraws:
    """Draws of one user whose timeline (sorted) has items `user_items`; `catalogue`:
    sorted unique int64 ids (`check_catalogue`).

    Raises:
        ValueError: the user's items cover the catalogue (no item is left to draw).
    """
    n, k = len(user_items), cfg.per_positive
    rng = user_rng(cfg.seed, user_id)
    u = rng.random((n, k))
    coin = rng.random(n) < 0.5
    free = len(catalogue) - len(_user_positions(catalogue, user_items))
    if free <= 0:
        raise ValueError(
            f"samples.negatives: user {user_id} has events on all {len(catalogue)} items "
            "of the catalogue; no item is left to draw a negative from")
    r = np.minimum((u * free).astype(np.int64), free - 1)
    items = free_items(catalogue, user_items, r.ravel()).reshape(n, k)
    replace = coin if cfg.mode == "replace" else np.zeros(n, dtype=bool)
    return NegativeDraws(items, replace)


@dataclass(frozen=True)
class TargetRows:
    """The sample rows of a run of targets: row j is built from timeline position
    `src[j]` with item `item[j]` and label `label[j]`; `generated[j]` marks a
    generated negative."""

    src: np.ndarray
    item: np.ndarray
    label: np.ndarray
    generated: np.ndarray


def target_rows(targets: np.ndarray, item_id: np.ndarray, label: np.ndarray,
                cfg: NegativesConfig, draws: NegativeDraws | None) -> TargetRows:
    """Rows for `targets` (timeline positions, increasing): each target's own row, then
    (mode "add") its `per_positive` negatives when its label is 1; mode "replace" swaps
    the item and label of the label-1 targets its coin picked."""
    t = np.asarray(targets, dtype=np.int64)
    lab = label[t].astype(np.int64)
    if draws is None or cfg.kind == "none":
        return TargetRows(t, item_id[t], lab, np.zeros(len(t), dtype=bool))
    if cfg.mode == "replace":
        gen = draws.replace[t] & (lab == 1)
        items = np.where(gen, draws.items[t, 0], item_id[t])
        return TargetRows(t, items, np.where(gen, 0, lab), gen)
    per = np.where(lab == 1, 1 + cfg.per_positive, 1)
    src = np.repeat(t, per)
    within = np.arange(len(src)) - np.repeat(np.cumsum(per) - per, per)  # 0 = the target
    gen = within > 0
    items = item_id[src].copy()
    items[gen] = draws.items[src[gen], within[gen] - 1]
    labels = label[src].astype(np.int64)
    labels[gen] = 0
    return TargetRows(src, items, labels, gen)
