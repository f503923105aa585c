"""Pure per-user sample building (no Beam, no TensorFlow): unit-tested directly.

Given one user's events (an `EventChunk` with `label` and `polarity` filled), this
module sorts the timeline, assigns ranks and splits, and builds the samples of the
sample contract (`tfnegseq.schema`) as Arrow RecordBatches, `batch_size` targets at a
time, so a user with 100,000+ events needs memory for that user's events plus one
batch, never more. With long lists (`lifelong_length` 2,000) a batch holds fewer
targets, so that it carries at most about `MAX_BATCH_VALUES` list values
(`targets_per_batch`); the samples, and their order, do not depend on the batching.

Targets (CTR): every event, or a thinned subset (`samples.target_stride`,
`samples.max_targets_per_user`; `select_targets`). Histories always hold every event.
Positive-only logs get generated label-0 samples (`samples.negatives`,
`tfnegseq.data.negatives`).

Timeline: stable sort by (timestamp, file_index, line), i.e. timestamp then input
order. Event `order` = 1-based rank in that sort.

"Before" (the leakage rule), per `SamplesConfig.before`:
    "timestamp" (default): history of target j = events with timestamp strictly
        smaller than j's. Events that tie with the target, including the target
        itself, are never in its history, whatever their input order.
    "order": history = events with a smaller order (ties broken by input order).

History lists: the most recent `max_history` positives (polarity +1) and negatives
(polarity -1) before the target, oldest first, with their orders. Neutral events are
targets but never history tokens. Lifelong list: the most recent `lifelong_length`
events of any polarity (neutral included, polarity 0) with their values.
`samples.negative_history` ("random", "catalogue") changes which negatives fill the
negative list (`negative_history`), never what counts as "before".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfnegseq.config import SamplesConfig, SplitConfig
from tfnegseq.data.events import EventChunk
from tfnegseq.data.negatives import draw_negatives, target_rows
from tfnegseq.schema import ITEM_VOCAB, PAD_ID, fingerprint64

SPLITS = ("train", "valid", "test")
# list values (ids, orders, polarities, values over every list column) one sample batch
# holds at most, whatever `samples.batch_size` says: 4M values are about 32 MB of
# int64, before Arrow and the tf.Example encoder copy them
MAX_BATCH_VALUES = 4_000_000


# ------------------------------------------------------------------------ timeline


def sort_timeline(events: EventChunk) -> EventChunk:
    """Events in (timestamp, file_index, line) order: stable and input-order tie-break."""
    idx = np.lexsort((events.line, events.file_index, events.timestamp))
    return events.take(idx)


def history_cut(timestamps: np.ndarray, before: str) -> np.ndarray:
    """For each event j of a sorted timeline, the number of events in its history
    window: events at indices < cut[j] are "before" j."""
    n = len(timestamps)
    if before == "order":
        return np.arange(n, dtype=np.int64)
    if before == "timestamp":
        return np.searchsorted(timestamps, timestamps, side="left").astype(np.int64)
    raise ValueError(f"`before` must be 'timestamp' or 'order'. Received: before={before!r}")


def ragged_windows(ends: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row offsets and flat indices of windows `[end - min(end, width), end)`.

    Returns (offsets [n+1] int64, idx [total] int64): row j's indices are
    idx[offsets[j]:offsets[j+1]], increasing (oldest first).
    """
    ends = np.asarray(ends, dtype=np.int64)
    lens = np.minimum(ends, width)
    offsets = np.zeros(len(ends) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    starts = ends - lens
    idx = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - starts, lens)
    return offsets, idx


# ---------------------------------------------------------------- negative history

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_RANDOM_HISTORY, _CATALOGUE_HISTORY = 1, 2  # domains of `keyed_uniform`


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _as_u64(values: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(values, dtype=np.int64)).astype(np.uint64)


def keyed_uniform(seed: int, user_id: int, domain: int, a: Any, b: Any) -> np.ndarray:
    """Uniform draws in [0, 1), elementwise over the broadcast of `a` and `b` (int
    arrays): each a pure function of (seed, user id, domain, a, b), a counter-based
    hash (SplitMix64), so a draw never depends on which other draws are made with it
    (batching, thinning, workers, retries)."""
    h = _mix64(_as_u64(seed) * _GOLDEN + _as_u64(domain))
    h = _mix64(h ^ _as_u64(user_id))
    h = _mix64(h ^ (_as_u64(a) * _GOLDEN))
    h = _mix64(h + _as_u64(b) * _GOLDEN)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def random_subsets(counts: np.ndarray, size: int, seed: int, user_id: int,
                   key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For row j, `min(counts[j], size)` distinct positions of `[0, counts[j])` drawn
    uniformly without replacement, increasing; row j's draws depend only on (seed,
    user id, key[j]).

    Returns (offsets [n+1] int64, idx [total] int64) as `ragged_windows` does. Rows
    with `counts <= size` take every position; the others run Floyd's algorithm
    (j = c - size, ..., c - 1: t uniform in [0, j], keep t unless already kept, else
    j), vectorised over rows: O(rows x size^2) comparisons, `size` at most
    `max_history`.
    """
    counts = np.asarray(counts, dtype=np.int64)
    key = np.asarray(key, dtype=np.int64)
    k = np.minimum(counts, size)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(k, out=offsets[1:])
    picks = np.broadcast_to(np.arange(size, dtype=np.int64), (len(counts), size)).copy()
    draw = np.flatnonzero(counts > size)
    if len(draw):
        j = counts[draw, None] - size + np.arange(size)  # [rows, size]: Floyd's j
        u = keyed_uniform(seed, user_id, _RANDOM_HISTORY, key[draw, None], np.arange(size))
        t = np.minimum((u * (j + 1)).astype(np.int64), j)  # uniform in [0, j]
        sub = np.empty_like(t)
        for i in range(size):
            taken = (sub[:, :i] == t[:, i, None]).any(axis=1)
            sub[:, i] = np.where(taken, j[:, i], t[:, i])
        sub.sort(axis=1)
        picks[draw] = sub
    return offsets, picks[np.arange(size) < k[:, None]]


def negative_history(cfg: SamplesConfig, user_id: int, counts: np.ndarray,
                     target_order: np.ndarray, neg_idx: np.ndarray, item_id: np.ndarray,
                     order: np.ndarray, catalogue: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The negative-history lists of a run of sample rows (`samples.negative_history`).

    `counts[j]`: the number of the user's negatives before row j's target (its history
    cut), `target_order[j]` that target's order; `neg_idx`: the timeline positions of
    the user's negatives (increasing); `item_id` / `order`: the timeline's. Returns
    (offsets [n+1], items, orders), lists oldest first:

    - "recent": the most recent `max_history` negatives;
    - "random": `min(count, size)` of all `count` negatives, uniformly without
      replacement, keyed by (seed, user id, target order);
    - "catalogue": the slots of the most recent `size` negatives (their orders), each
      item replaced by `catalogue[floor(u * len(catalogue))]`, u keyed by (seed, user
      id, that negative's order): the same event gets the same item in every row.
      `catalogue`: sorted unique item ids, required (`ValueError` without one).
    """
    mode, seed = cfg.negative_history, cfg.negative_history_seed
    if mode == "random":
        offsets, flat = random_subsets(counts, cfg.negative_history_length(), seed, user_id,
                                       target_order)
    else:
        width = cfg.max_history if mode == "recent" else cfg.negative_history_length()
        offsets, flat = ragged_windows(counts, width)
    ev_idx = neg_idx[flat]
    orders = order[ev_idx]
    if mode != "catalogue":
        return offsets, item_id[ev_idx], orders
    if catalogue is None or not len(catalogue):
        raise ValueError("samples.negative_history 'catalogue': needs a non-empty item "
                         "catalogue (`catalogue`)")
    u = keyed_uniform(seed, user_id, _CATALOGUE_HISTORY, orders, 0)
    pick = np.minimum((u * len(catalogue)).astype(np.int64), len(catalogue) - 1)
    return offsets, np.asarray(catalogue, dtype=np.int64)[pick], orders


# -------------------------------------------------------------------------- splits


@dataclass
class SplitAssigner:
    """Maps targets to 0 (train), 1 (valid), 2 (test) according to `SplitConfig`.

    For `temporal` splits with fractions, the Beam job computes the global time span
    first and passes `valid_start` / `test_start` (ms) explicitly.
    """

    cfg: SplitConfig
    valid_start: int | None = None
    test_start: int | None = None

    def __post_init__(self) -> None:
        if self.valid_start is None and self.cfg.valid_start is not None:
            self.valid_start = self.cfg.valid_start
            self.test_start = self.cfg.test_start

    @staticmethod
    def temporal_cutoffs(cfg: SplitConfig, t_min: int, t_max: int) -> tuple[int, int]:
        """Cut-offs (ms) from the global span: the last fractions of time are valid / test."""
        if cfg.valid_start is not None and cfg.test_start is not None:
            return cfg.valid_start, cfg.test_start
        span = t_max - t_min
        test_start = t_min + int(np.ceil(span * (1.0 - cfg.test_fraction)))
        valid_start = t_min + int(np.ceil(span * (1.0 - cfg.test_fraction - cfg.valid_fraction)))
        if cfg.test_fraction == 0:
            test_start = t_max + 1
        if cfg.valid_fraction == 0:
            valid_start = test_start
        return valid_start, test_start

    def user_bucket(self, user_id: int) -> float:
        """Stable position of a user in [0, 1) (salted fingerprint)."""
        return (fingerprint64(f"{self.cfg.salt}:{user_id}") % 1_000_000) / 1_000_000.0

    def assign(self, user_id: int, timestamps: np.ndarray) -> np.ndarray:
        n = len(timestamps)
        out = np.zeros(n, dtype=np.int8)
        kind = self.cfg.kind
        if kind == "temporal":
            if self.valid_start is None or self.test_start is None:
                raise ValueError("temporal split needs valid_start / test_start")
            out[timestamps >= self.valid_start] = 1
            out[timestamps >= self.test_start] = 2
        elif kind == "user":
            b = self.user_bucket(user_id)
            if b < self.cfg.test_fraction:
                out[:] = 2
            elif b < self.cfg.test_fraction + self.cfg.valid_fraction:
                out[:] = 1
        elif kind == "last_k":
            k = self.cfg.k
            out[max(n - 2 * k, 0) : max(n - k, 0)] = 1
            out[max(n - k, 0) :] = 2
        else:  # pragma: no cover - config validation prevents it
            raise ValueError(f"unknown split kind {kind!r}")
        return out


# ------------------------------------------------------------------ side features


@dataclass
class SideTables:
    """Profile features per user and side features per item, by raw id.

    Missing users / items / values give `PAD_ID`. An item feature absent from the
    item table is taken from the target event's column of the same name when the
    source carries it per event (Taobao's category, say).
    """

    users: Mapping[int, dict[str, int]] = field(default_factory=dict)
    items: Mapping[int, dict[str, int]] = field(default_factory=dict)
    # the features every row of `items` carries, when the caller knows them (the Beam
    # job: the requested item features); None: found by scanning the table once
    item_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # which features the item table carries, found once (not per batch: a
        # catalogue can hold millions of items)
        self.item_table_features: set[str] = set()
        if self.item_names is not None:
            if len(self.items):
                self.item_table_features.update(self.item_names)
            return
        for row in self.items.values():
            self.item_table_features.update(row)

    def user_values(self, user_id: int, names: list[str]) -> dict[str, int]:
        row = self.users.get(int(user_id), {})
        return {n: int(row.get(n, PAD_ID)) for n in names}

    def item_values(self, item_ids: np.ndarray, name: str, events: EventChunk | None,
                    idx: np.ndarray | None) -> np.ndarray:
        if name in self.item_table_features:
            return np.fromiter(
                (self.items.get(int(i), {}).get(name, PAD_ID) for i in item_ids),
                dtype=np.int64, count=len(item_ids),
            )
        if events is not None and idx is not None and name in events.columns:
            col = events.columns[name][idx]
            return np.where(np.isfinite(col), col, PAD_ID).astype(np.int64)
        return np.full(len(item_ids), PAD_ID, dtype=np.int64)


# ------------------------------------------------------------------- CTR samples


@dataclass
class UserStats:
    """What one user contributed, for the manifest."""

    samples: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    positives: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    pos_len_sum: int = 0
    neg_len_sum: int = 0
    pos_len_max: int = 0
    neg_len_max: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    life_len_sum: int = 0
    life_len_max: int = 0

    def merge(self, other: UserStats) -> UserStats:
        ex = dict(self.excluded)
        for k, v in other.excluded.items():
            ex[k] = ex.get(k, 0) + v
        return UserStats(
            self.samples + other.samples,
            self.positives + other.positives,
            self.pos_len_sum + other.pos_len_sum,
            self.neg_len_sum + other.neg_len_sum,
            max(self.pos_len_max, other.pos_len_max),
            max(self.neg_len_max, other.neg_len_max),
            ex,
            self.life_len_sum + other.life_len_sum,
            max(self.life_len_max, other.life_len_max),
        )


def count_ctr_batch(stats: UserStats, split: int, batch: Any) -> None:
    """Adds one CTR batch of split `split` to `stats`: samples, positives and the
    lengths of its positive / negative histories and lifelong lists.

    `build_ctr_samples(..., stats=...)` calls it for each batch it yields; a caller
    that passes no `stats` calls it for the batches it has written, so the stats never
    count samples that were not written.
    """
    import pyarrow.compute as pc

    stats.samples[split] += batch.num_rows
    stats.positives[split] += int(np.sum(batch.column("label").flatten().to_numpy()))
    for name in ("pos", "neg", "life"):
        if f"{name}_item_id" not in batch.schema.names:
            continue
        lens = pc.list_value_length(batch.column(f"{name}_item_id")).to_numpy(
            zero_copy_only=False)
        total, longest = int(lens.sum()), int(lens.max(initial=0))
        if name == "pos":
            stats.pos_len_sum += total
            stats.pos_len_max = max(stats.pos_len_max, longest)
        elif name == "neg":
            stats.neg_len_sum += total
            stats.neg_len_max = max(stats.neg_len_max, longest)
        else:
            stats.life_len_sum += total
            stats.life_len_max = max(stats.life_len_max, longest)


def _list_array(offsets: np.ndarray, values: np.ndarray, pa_type):
    import pyarrow as pa

    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32), pa.int32()), pa.array(values, pa_type)
    )


def _scalar_array(values: np.ndarray, pa_type):
    return _list_array(np.arange(len(values) + 1), values, pa_type)


def _labelled(ev: EventChunk) -> tuple[np.ndarray, np.ndarray]:
    if ev.label is None or ev.polarity is None:
        raise ValueError("events need label and polarity: run tfnegseq.data.rules.apply_rules")
    return ev.label, ev.polarity


def values_per_row(cfg: SamplesConfig) -> int:
    """Upper bound of the values one CTR sample holds: 4 history lists of
    `max_history`, 4 (+ one per `lifelong_item_features`) lifelong lists of
    `lifelong_length`, scalars and side features."""
    return (4 * cfg.max_history + (4 + len(cfg.lifelong_item_features)) * cfg.lifelong_length + 5
            + len(cfg.user_features) + len(cfg.item_features))


def targets_per_batch(cfg: SamplesConfig, max_batch_values: int = MAX_BATCH_VALUES) -> int:
    """Targets per Arrow batch: `batch_size`, fewer when a batch would hold more than
    `max_batch_values` values (rows of generated negatives included); at least 1."""
    rows = max_batch_values // values_per_row(cfg)
    neg = cfg.negatives
    if neg.kind != "none" and neg.mode == "add":
        rows //= 1 + neg.per_positive
    return max(1, min(cfg.batch_size, rows))


def select_targets(n: int, cfg: SamplesConfig) -> np.ndarray:
    """Timeline positions (0-based, increasing) of the targets among `n` events: those
    with `(n - order) % target_stride == 0` (order = position + 1, so the last event is
    always one), then only the last `max_targets_per_user` of them (0: all)."""
    pos = np.arange(n - 1, -1, -cfg.target_stride, dtype=np.int64)[::-1]
    if cfg.max_targets_per_user:
        pos = pos[-cfg.max_targets_per_user:]
    return np.ascontiguousarray(pos)


def build_ctr_samples(
    user_events: EventChunk,
    cfg: SamplesConfig,
    splitter: SplitAssigner,
    side: SideTables | None = None,
    stats: UserStats | None = None,
    catalogue: np.ndarray | None = None,
    max_batch_values: int = MAX_BATCH_VALUES,
) -> Iterator[tuple[int, object]]:
    """Yields (split index, pyarrow.RecordBatch) for one user's events.

    `user_events` must hold one user's events (any order; sorted here) with labels
    and polarities. Batches have the columns of `tfnegseq.schema.arrow_schema(cfg)`,
    rows in target order (a generated negative right after its positive), at most
    `targets_per_batch(cfg, max_batch_values)` targets each.

    `catalogue`: the item ids negatives are drawn from, sorted and unique (checked by
    the caller, once: `negatives.check_catalogue`); required when `cfg.negatives.kind`
    is not "none" or `cfg.negative_history` is "catalogue". Raises `ValueError`
    without it, or when generated negatives find the user's items cover it (before
    anything is yielded).

    `neg_*` lists follow `cfg.negative_history` (`negative_history`).
    """
    import pyarrow as pa

    from tfnegseq.schema import arrow_schema

    if not len(user_events):
        return
    side = side or SideTables()
    ev = sort_timeline(user_events)
    label, polarity = _labelled(ev)
    n = len(ev)
    user_id = int(ev.user_id[0])
    draws = None
    if cfg.negative_history == "catalogue" and (catalogue is None or not len(catalogue)):
        raise ValueError("samples.negative_history 'catalogue': needs the item catalogue "
                         "(`catalogue`)")
    if cfg.negatives.kind != "none":
        if catalogue is None:
            raise ValueError("samples.negatives: needs the item catalogue (`catalogue`)")
        draws = draw_negatives(cfg.negatives, user_id, ev.item_id,
                               np.asarray(catalogue, dtype=np.int64))
    cut = history_cut(ev.timestamp, cfg.before)
    pos_idx = np.flatnonzero(polarity == 1)
    neg_idx = np.flatnonzero(polarity == -1)
    n_pos_before = np.searchsorted(pos_idx, cut, side="left")
    n_neg_before = np.searchsorted(neg_idx, cut, side="left")
    targets = select_targets(n, cfg)
    split_of_target = splitter.assign(user_id, ev.timestamp[targets])
    order = np.arange(1, n + 1, dtype=np.int64)
    schema = arrow_schema(cfg)
    user_vals = side.user_values(user_id, cfg.user_features)
    h, life = cfg.max_history, cfg.lifelong_length
    i64, f32 = pa.int64(), pa.float32()
    step = targets_per_batch(cfg, max_batch_values)
    # each event's lifelong side features, looked up once per user (not per list slot)
    life_side = {f: side.item_values(ev.item_id, f, ev, np.arange(n))
                 for f in cfg.lifelong_item_features} if life > 0 else {}

    for start in range(0, len(targets), step):
        chunk = targets[start:start + step]
        rows = target_rows(chunk, ev.item_id, label, cfg.negatives, draws)
        t = rows.src  # timeline position of each row
        m = len(t)
        cols: dict[str, object] = {
            "user_id": _scalar_array(np.full(m, user_id, np.int64), i64),
            "item_id": _scalar_array(rows.item, i64),
            "timestamp": _scalar_array(ev.timestamp[t], i64),
            "order": _scalar_array(order[t], i64),
            "label": _scalar_array(rows.label, i64),
        }
        offsets, flat = ragged_windows(n_pos_before[t], h)
        ev_idx = pos_idx[flat]
        cols["pos_item_id"] = _list_array(offsets, ev.item_id[ev_idx], i64)
        cols["pos_order"] = _list_array(offsets, order[ev_idx], i64)
        offsets, neg_items, neg_orders = negative_history(
            cfg, user_id, n_neg_before[t], order[t], neg_idx, ev.item_id, order, catalogue)
        cols["neg_item_id"] = _list_array(offsets, neg_items, i64)
        cols["neg_order"] = _list_array(offsets, neg_orders, i64)
        del ev_idx, neg_items, neg_orders
        if life > 0:
            offsets, ev_idx = ragged_windows(cut[t], life)
            cols["life_item_id"] = _list_array(offsets, ev.item_id[ev_idx], i64)
            cols["life_order"] = _list_array(offsets, order[ev_idx], i64)
            cols["life_polarity"] = _list_array(offsets, polarity[ev_idx].astype(np.int64), i64)
            cols["life_value"] = _list_array(offsets, ev.value[ev_idx].astype(np.float32), f32)
            for f in cfg.lifelong_item_features:
                cols[f"life_item_{f}"] = _list_array(offsets, life_side[f][ev_idx], i64)
            del ev_idx
        for f in cfg.user_features:
            cols[f"user_{f}"] = _scalar_array(np.full(m, user_vals[f], np.int64), i64)
        gen = np.flatnonzero(rows.generated)
        for f in cfg.item_features:
            vals = side.item_values(ev.item_id[t], f, ev, t)
            if len(gen):  # the drawn item's own feature, never the positive's
                vals[gen] = side.item_values(rows.item[gen], f, None, None)
            cols[f"item_{f}"] = _scalar_array(vals, i64)

        sp = split_of_target[start:start + step][np.searchsorted(chunk, t)]
        for s in range(3):
            sel = np.flatnonzero(sp == s)
            if not len(sel):
                continue
            arrays = [cols[f.name] for f in schema]
            batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
            if len(sel) != m:
                batch = batch.take(pa.array(sel))
            if stats is not None:
                count_ctr_batch(stats, s, batch)
            yield s, batch
            del batch, arrays
        del cols, rows, t  # before the next batch is built: one batch alive at a time


# ------------------------------------------------------------ sequential samples


def build_sequential_sample(
    user_events: EventChunk,
    cfg: SamplesConfig,
    side: SideTables | None = None,
    stats: UserStats | None = None,
) -> object | None:
    """One sample per user for next-item recommendation (SINE §5.1 protocol).

    The user's last positive is the test target, the second-to-last the validation
    target (leave-last-two). `seq_*` holds the most recent `max_sequence` positive and
    negative events strictly before the test target in timeline order (neutral events
    dropped), and `valid_index` is the validation positive's position in it. Users with
    fewer than 3 positives, or whose validation positive falls outside the window, are
    excluded and counted in `stats.excluded`. Returns a one-row RecordBatch or None.
    """
    import pyarrow as pa

    from tfnegseq.schema import arrow_schema

    side = side or SideTables()
    ev = sort_timeline(user_events)
    _, polarity = _labelled(ev)
    keep = np.flatnonzero(polarity != 0)
    pos = keep[polarity[keep] == 1]
    if len(pos) < 3:
        if stats is not None:
            stats.excluded["fewer_than_3_positives"] = (
                stats.excluded.get("fewer_than_3_positives", 0) + 1
            )
        return None
    test_i, valid_i = pos[-1], pos[-2]
    window = keep[keep < test_i][-cfg.max_sequence :]
    where = np.flatnonzero(window == valid_i)
    if not len(where):
        if stats is not None:
            stats.excluded["valid_beyond_max_sequence"] = (
                stats.excluded.get("valid_beyond_max_sequence", 0) + 1
            )
        return None
    order = np.arange(1, len(ev) + 1, dtype=np.int64)
    i64 = pa.int64()
    one = np.array([0, len(window)])
    cols = {
        "user_id": _scalar_array(ev.user_id[:1], i64),
        "seq_item_id": _list_array(one, ev.item_id[window], i64),
        "seq_order": _list_array(one, order[window], i64),
        "seq_polarity": _list_array(one, polarity[window].astype(np.int64), i64),
        "seq_timestamp": _list_array(one, ev.timestamp[window], i64),
        "valid_index": _scalar_array(where[:1].astype(np.int64), i64),
        "valid_item_id": _scalar_array(ev.item_id[[valid_i]], i64),
        "test_item_id": _scalar_array(ev.item_id[[test_i]], i64),
    }
    user_vals = side.user_values(int(ev.user_id[0]), cfg.user_features)
    for f in cfg.user_features:
        cols[f"user_{f}"] = _scalar_array(np.array([user_vals[f]], np.int64), i64)
    for f in cfg.item_features:
        cols[f"item_{f}"] = _scalar_array(
            side.item_values(ev.item_id[[test_i]], f, ev, np.array([test_i])), i64
        )
    schema = arrow_schema(cfg)
    if stats is not None:
        stats.samples[2] += 1
        stats.positives[2] += 1
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


# ------------------------------------------------------------ vocabulary counts

def _count(counts: Counter[tuple[str, int]], name: str, values: np.ndarray) -> None:
    ids, n = np.unique(np.asarray(values, np.int64), return_counts=True)
    for i, c in zip(ids.tolist(), n.tolist(), strict=True):
        counts[(name, i)] += c


def ctr_vocab_counts(batch: Any, cfg: SamplesConfig,
                     seen: np.ndarray | None = None) -> Counter[tuple[str, int]]:
    """Vocabulary counts of one batch of CTR samples: every scalar id feature
    (`user_id`, `item_id`, `user_<f>`, `item_<f>`), one count per sample (a generated
    negative's item included).

    `seen`: a bool array over one user's orders (`len(events) + 1` long), False at the
    user's first batch, passed again with each later batch of the user. With it the
    history lists (`pos_*`, `neg_*`, `life_*`) count too: `item_id` once per event of
    the user that no earlier sample of the user counted, as a target or in a history
    (`seen` records them). Without thinning every history event is an earlier target
    of the same split, so this adds nothing; with `target_stride` /
    `max_targets_per_user` it counts the events that appear only in histories, which
    would otherwise map to OOV buckets. Their `item_<f>` are not counted.

    The Beam job counts the train split's batches only. A train sample's history holds
    earlier events of the same user, which the temporal, user and last-k splits all put
    in train too.
    """
    from tfnegseq import schema

    counts: Counter[tuple[str, int]] = Counter()
    for f in schema.features(cfg):
        if f.vocab and not f.is_list:
            _count(counts, f.vocab, batch.column(f.name).flatten().to_numpy())
    if seen is None:
        return counts
    seen[batch.column("order").flatten().to_numpy()] = True
    lists = ["pos", "neg"] + (["life"] if cfg.lifelong_length > 0 else [])

    def flat(name: str) -> np.ndarray:
        return np.asarray(batch.column(name).flatten().to_numpy(zero_copy_only=False),
                          np.int64)

    orders = np.concatenate([flat(f"{p}_order") for p in lists])
    items = np.concatenate([flat(f"{p}_item_id") for p in lists])
    new = ~seen[orders]
    first_orders, first = np.unique(orders[new], return_index=True)
    _count(counts, ITEM_VOCAB, items[new][first])
    seen[first_orders] = True
    return counts


def sequential_vocab_counts(batch: Any, user_events: EventChunk, cfg: SamplesConfig,
                            side: SideTables | None = None) -> Counter[tuple[str, int]]:
    """Vocabulary counts of one user's sequential sample (`build_sequential_sample`'s
    one-row batch for `user_events`), over the user's *training events* only.

    Training events are `seq_*[:valid_index]`: the window's events before the
    validation positive, i.e. what a model is trained on when the validation and test
    targets are held out. The validation and test targets, the events between them and
    the events older than the window are not counted. Counted: `item_id` once per
    training event, `item_<f>` of each training event, and `user_id` / `user_<f>` once
    when the user has at least one training event.
    """
    from tfnegseq import schema

    counts: Counter[tuple[str, int]] = Counter()
    row = batch.to_pylist()[0]
    k = row["valid_index"][0]
    if k == 0:
        return counts
    _count(counts, schema.ITEM_VOCAB, np.asarray(row["seq_item_id"][:k]))
    _count(counts, schema.USER_VOCAB, np.asarray(row["user_id"]))
    for f in cfg.user_features:
        _count(counts, f"user_{f}", np.asarray(row[f"user_{f}"]))
    if cfg.item_features:
        ev = sort_timeline(user_events)
        idx = np.asarray(row["seq_order"][:k], np.int64) - 1  # orders are 1-based ranks
        side = side or SideTables()
        for f in cfg.item_features:
            _count(counts, f"item_{f}", side.item_values(ev.item_id[idx], f, ev, idx))
    return counts


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of interactions kept by iterative k-core filtering: every kept user
    and item has at least `k` kept interactions."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        u, ui = np.unique(users[keep], return_inverse=True)
        i, ii = np.unique(items[keep], return_inverse=True)
        ok = (np.bincount(ui)[ui] >= k) & (np.bincount(ii)[ii] >= k)
        if ok.all():
            return keep
        idx = np.flatnonzero(keep)
        keep[idx[~ok]] = False
