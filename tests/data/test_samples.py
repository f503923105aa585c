"""Per-user sample building against hand-worked examples and a brute-force reference."""

import numpy as np
import pytest

from tfnegseq.config import SamplesConfig, SplitConfig
from tfnegseq.data.events import EventChunk
from tfnegseq.data.samples import (
    SideTables,
    SplitAssigner,
    UserStats,
    build_ctr_samples,
    build_sequential_sample,
    ctr_vocab_counts,
    history_cut,
    kcore_mask,
    ragged_windows,
    sequential_vocab_counts,
)
from tfnegseq.schema import PAD_ID


def make_events(user, items, ts_s, pols, labels=None, lines=None, values=None):
    n = len(items)
    pols = np.asarray(pols)
    return EventChunk(
        user_id=np.full(n, user),
        item_id=items,
        timestamp=np.asarray(ts_s) * 1000,
        value=values if values is not None else np.arange(n, dtype=float),
        file_index=np.zeros(n),
        line=lines if lines is not None else np.arange(1, n + 1),
        label=labels if labels is not None else (pols == 1).astype(int),
        polarity=pols,
    )


def all_rows(events, cfg, split_cfg=None, side=None, stats=None):
    splitter = SplitAssigner(split_cfg or SplitConfig(kind="user", valid_fraction=0, test_fraction=0))
    rows = []
    for split, batch in build_ctr_samples(events, cfg, splitter, side, stats):
        for r in batch.to_pylist():
            rows.append({k: (v[0] if len(v) == 1 and not k.startswith(("pos", "neg", "life")) else v)
                         for k, v in r.items()} | {"split": split})
    return sorted(rows, key=lambda r: r["order"])


def test_hand_worked_example_timestamp_rule():
    # items 100..104 at t = 10, 20, 20, 30, 40 with polarity +, -, +, neutral, -
    ev = make_events(7, [100, 101, 102, 103, 104], [10, 20, 20, 30, 40], [1, -1, 1, 0, -1])
    rows = all_rows(ev, SamplesConfig(max_history=10))
    assert [r["item_id"] for r in rows] == [100, 101, 102, 103, 104]
    assert [r["order"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["pos_item_id"] for r in rows] == [[], [100], [100], [100, 102], [100, 102]]
    assert [r["neg_item_id"] for r in rows] == [[], [], [], [101], [101]]
    assert rows[4]["pos_order"] == [1, 3] and rows[4]["neg_order"] == [2]
    # the tie at t=20: neither tied event sees the other
    assert 101 not in rows[2]["neg_item_id"] and 102 not in rows[1]["pos_item_id"]
    assert [r["label"] for r in rows] == [1, 0, 1, 0, 0]


def test_hand_worked_example_order_rule():
    ev = make_events(7, [100, 101, 102, 103, 104], [10, 20, 20, 30, 40], [1, -1, 1, 0, -1])
    rows = all_rows(ev, SamplesConfig(max_history=10, before="order"))
    # with "order", the tie is broken by input order: event 3 (item 102) sees item 101
    assert rows[2]["neg_item_id"] == [101]
    assert rows[1]["pos_item_id"] == [100]


def test_input_order_breaks_ties_in_the_timeline():
    # same timestamps, lines given out of order: the sort must follow (timestamp, line)
    ev = make_events(1, [5, 6, 7], [10, 10, 10], [1, 1, 1], lines=[3, 1, 2])
    rows = all_rows(ev, SamplesConfig(max_history=10, before="order"))
    assert [r["item_id"] for r in rows] == [6, 7, 5]
    assert rows[2]["pos_item_id"] == [6, 7]


def brute_force(items, ts, pols, h, before, life=0, values=None, genre=None):
    order = sorted(range(len(items)), key=lambda i: (ts[i], i))
    out = []
    for rank, j in enumerate(order):
        prior = [
            i for r, i in enumerate(order)
            if (ts[i] < ts[j] if before == "timestamp" else r < rank)
        ]
        pos = [i for i in prior if pols[i] == 1][-h:]
        neg = [i for i in prior if pols[i] == -1][-h:]
        rec = {
            "item_id": items[j],
            "pos_item_id": [items[i] for i in pos],
            "neg_item_id": [items[i] for i in neg],
            "pos_order": [order.index(i) + 1 for i in pos],
            "neg_order": [order.index(i) + 1 for i in neg],
        }
        if life:
            ll = prior[-life:]
            rec["life_item_id"] = [items[i] for i in ll]
            rec["life_polarity"] = [pols[i] for i in ll]
            rec["life_value"] = [values[i] for i in ll]
            if genre is not None:  # each lifelong event's own item's genre
                rec["life_item_genre"] = [genre.get(items[i], PAD_ID) for i in ll]
        out.append(rec)
    return out


@pytest.mark.parametrize("before", ["timestamp", "order"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_and_never_leaks(before, seed):
    rng = np.random.default_rng(seed)
    n = 300
    items = rng.integers(0, 50, n)
    ts = np.sort(rng.integers(0, 120, n))  # many ties
    pols = rng.choice([1, -1, 0], n, p=[0.3, 0.5, 0.2])
    values = rng.random(n).astype(np.float32)
    genre = {i: 100 + i % 6 for i in range(0, 50, 2)}  # odd items have no genre
    cfg = SamplesConfig(max_history=7, lifelong_length=5, before=before, batch_size=64,
                        item_features=["genre"], lifelong_item_features=["genre"])
    rows = all_rows(make_events(3, items, ts, pols, values=values), cfg,
                    side=SideTables(items={i: {"genre": g} for i, g in genre.items()}))
    ref = brute_force(items.tolist(), ts.tolist(), pols.tolist(), 7, before, 5, values.tolist(),
                      genre)
    assert len(rows) == n
    for got, want in zip(rows, ref, strict=True):
        for k in want:
            if k == "life_value":
                np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
            else:
                assert got[k] == want[k], k
        # leakage: nothing at or after the target
        for o in got["pos_order"] + got["neg_order"] + got["life_order"]:
            assert o < got["order"]
            if before == "timestamp":
                assert ts[np.argsort(ts, kind="stable")][o - 1] < got["timestamp"] // 1000


def test_batch_size_does_not_change_samples():
    rng = np.random.default_rng(5)
    n = 257
    ev = make_events(1, rng.integers(0, 30, n), np.sort(rng.integers(0, 500, n)),
                     rng.choice([1, -1], n))
    a = all_rows(ev, SamplesConfig(max_history=20, batch_size=10))
    b = all_rows(ev, SamplesConfig(max_history=20, batch_size=10_000))
    assert a == b


def test_ragged_windows():
    offsets, idx = ragged_windows(np.array([0, 3, 5, 1]), 2)
    assert offsets.tolist() == [0, 0, 2, 4, 5]
    assert idx.tolist() == [1, 2, 3, 4, 0]


def test_history_cut_rejects_unknown_rule():
    with pytest.raises(ValueError, match="before"):
        history_cut(np.array([1, 2]), "sometime")


def test_splits_disjoint_and_complete_temporal():
    rng = np.random.default_rng(0)
    ts = np.sort(rng.integers(0, 1000, 200))
    ev = make_events(1, rng.integers(0, 9, 200), ts, rng.choice([1, -1], 200))
    # span 0..999,000 ms: the last 10% is test, the 10% before it valid
    vs, te = SplitAssigner.temporal_cutoffs(SplitConfig(), 0, 999_000)
    assert (vs, te) == (799_200, 899_100)
    splitter = SplitAssigner(SplitConfig(kind="temporal"), vs, te)
    seen = {}
    for split, batch in build_ctr_samples(ev, SamplesConfig(), splitter):
        for o, t in zip(batch.column("order").flatten().to_pylist(),
                        batch.column("timestamp").flatten().to_pylist(), strict=True):
            assert o not in seen
            seen[o] = split
            assert split == (2 if t >= te else 1 if t >= vs else 0)
    assert sorted(seen) == list(range(1, 201))
    assert set(seen.values()) == {0, 1, 2}


def test_user_split_puts_whole_users_in_one_split_at_expected_rates():
    cfg = SplitConfig(kind="user", valid_fraction=0.2, test_fraction=0.3)
    s = SplitAssigner(cfg)
    got = np.array([s.assign(u, np.zeros(4))[0] for u in range(4000)])
    assert all(len(set(s.assign(u, np.zeros(4)))) == 1 for u in range(50))
    assert abs((got == 2).mean() - 0.3) < 0.03 and abs((got == 1).mean() - 0.2) < 0.03


def test_last_k_split():
    s = SplitAssigner(SplitConfig(kind="last_k", k=2))
    assert s.assign(1, np.arange(7)).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert s.assign(1, np.arange(3)).tolist() == [1, 2, 2]


def test_side_features_and_stats():
    ev = make_events(4, [1, 2, 3], [1, 2, 3], [1, -1, 1])
    side = SideTables(users={4: {"age": 30}}, items={1: {"genre": 5}, 3: {"genre": 7}})
    stats = UserStats()
    rows = all_rows(ev, SamplesConfig(user_features=["age"], item_features=["genre"]),
                    side=side, stats=stats)
    assert [r["user_age"] for r in rows] == [30, 30, 30]
    assert [r["item_genre"] for r in rows] == [5, PAD_ID, 7]
    assert stats.samples.tolist() == [3, 0, 0] and stats.positives.tolist() == [2, 0, 0]
    assert stats.pos_len_max == 1 and stats.neg_len_sum == 1


def test_sequential_leave_last_two():
    # polarities: + - + 0 + - +   -> positives at 0,2,4,6; test = 6, valid = 4
    ev = make_events(9, [10, 11, 12, 13, 14, 15, 16], [1, 2, 3, 4, 5, 6, 7], [1, -1, 1, 0, 1, -1, 1])
    cfg = SamplesConfig(task="sequential", max_sequence=10)
    r = build_sequential_sample(ev, cfg).to_pylist()[0]
    assert r["seq_item_id"] == [10, 11, 12, 14, 15]  # neutral 13 dropped, test 16 excluded
    assert r["seq_polarity"] == [1, -1, 1, 1, -1]
    assert r["valid_index"] == [3] and r["valid_item_id"] == [14] and r["test_item_id"] == [16]
    stats = UserStats()
    few = make_events(9, [1, 2], [1, 2], [1, 1])
    assert build_sequential_sample(few, cfg, stats=stats) is None
    assert stats.excluded == {"fewer_than_3_positives": 1}


def test_sequential_vocab_counts_cover_the_training_events_only():
    """Training events = seq_*[:valid_index]: 10, 11, 12 (the neutral 13 is no sequence
    event; the valid 14, the 15 after it and the test 16 are held out). Item features
    come from those events' own column (input order shuffled: counts follow the timeline)."""
    ev = make_events(9, [16, 10, 11, 12, 13, 14, 15], [7, 1, 2, 3, 4, 5, 6],
                     [1, 1, -1, 1, 0, 1, -1], lines=[7, 1, 2, 3, 4, 5, 6])
    ev.columns["cat"] = ev.item_id.astype(float) * 10
    cfg = SamplesConfig(task="sequential", max_sequence=10, user_features=["age"],
                        item_features=["cat"])
    side = SideTables(users={9: {"age": 30}})
    batch = build_sequential_sample(ev, cfg, side)
    assert dict(sequential_vocab_counts(batch, ev, cfg, side)) == {
        ("item_id", 10): 1, ("item_id", 11): 1, ("item_id", 12): 1, ("user_id", 9): 1,
        ("user_age", 30): 1, ("item_cat", 100): 1, ("item_cat", 110): 1, ("item_cat", 120): 1,
    }
    # the validation positive first in the window: no training event, nothing counted
    first = make_events(9, [1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7], [1, -1, -1, 1, -1, -1, 1])
    cfg = SamplesConfig(task="sequential", max_sequence=3)
    batch = build_sequential_sample(first, cfg)
    assert batch.to_pylist()[0]["valid_index"] == [0]
    assert not sequential_vocab_counts(batch, first, cfg)


def test_ctr_vocab_counts_count_each_scalar_id_once_per_sample():
    ev = make_events(4, [1, 2, 1], [1, 2, 3], [1, -1, 1])
    cfg = SamplesConfig(user_features=["age"], item_features=["genre"])
    side = SideTables(users={4: {"age": 30}}, items={1: {"genre": 5}})
    splitter = SplitAssigner(SplitConfig(kind="user", valid_fraction=0, test_fraction=0))
    (_, batch), = build_ctr_samples(ev, cfg, splitter, side)
    assert dict(ctr_vocab_counts(batch, cfg)) == {
        ("user_id", 4): 3, ("item_id", 1): 2, ("item_id", 2): 1, ("user_age", 30): 3,
        ("item_genre", 5): 2, ("item_genre", PAD_ID): 1,
    }


def test_kcore_mask_matches_brute_force():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 600)
    items = rng.integers(0, 60, 600)
    keep = kcore_mask(users, items, 8)
    # brute force: repeat removal until fixpoint
    alive = set(range(600))
    while True:
        uc, ic = {}, {}
        for i in alive:
            uc[users[i]] = uc.get(users[i], 0) + 1
            ic[items[i]] = ic.get(items[i], 0) + 1
        drop = {i for i in alive if uc[users[i]] < 8 or ic[items[i]] < 8}
        if not drop:
            break
        alive -= drop
    assert set(np.flatnonzero(keep).tolist()) == alive


def test_long_user_needs_memory_for_its_events_plus_one_batch():
    """A 120,000-event user: building all its samples (~24M history ids, ~190 MB if held
    at once) peaks at the user's own arrays plus one batch of samples."""
    import tracemalloc

    import pyarrow as pa

    n = 120_000
    rng = np.random.default_rng(0)
    ev = make_events(1, rng.integers(0, 5000, n), np.arange(n), rng.choice([1, -1], n))
    cfg = SamplesConfig(max_history=100, batch_size=1024)
    pool = pa.default_memory_pool()
    tracemalloc.start()
    arrow_start = pool.bytes_allocated()
    arrow_peak, count = 0, 0
    for _, batch in build_ctr_samples(ev, cfg, SplitAssigner(SplitConfig(kind="last_k"))):
        count += batch.num_rows
        arrow_peak = max(arrow_peak, pool.bytes_allocated() - arrow_start)
        del batch
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    one_batch = 1024 * (2 * 2 * 100 + 10) * 8  # ids + orders of both lists, scalars
    all_samples = n * (2 * 2 * 100) * 8 // 2  # histories are ~half full on average
    # the user's own arrays (timeline copy, ranks, cuts, split: < 64 int64 per event)
    own_events = n * 8 * 64
    assert numpy_peak < own_events + 4 * one_batch, numpy_peak
    assert numpy_peak < all_samples // 2, (numpy_peak, all_samples)
    assert arrow_peak < 4 * one_batch, arrow_peak


def test_long_user_with_lifelong_needs_memory_for_its_events_plus_one_batch():
    """A 120,000-event user with 2,000-long lifelong lists: its samples hold ~240M
    lifelong values per list (~7.6 GB if held at once); building them peaks at the
    user's own arrays plus about one batch, whose targets `targets_per_batch` caps so
    that a batch holds at most `MAX_BATCH_VALUES` values (475 targets here, not the
    2,048 of `batch_size`, which alone would need ~130 MB per list column)."""
    import tracemalloc

    import pyarrow as pa

    from tfnegseq.data.samples import MAX_BATCH_VALUES, targets_per_batch, values_per_row

    n, life = 120_000, 2000
    rng = np.random.default_rng(0)
    ev = make_events(1, rng.integers(0, 5000, n), np.arange(n), rng.choice([1, -1, 0], n),
                     values=rng.random(n))
    cfg = SamplesConfig(max_history=100, lifelong_length=life, batch_size=2048)
    rows = targets_per_batch(cfg)
    assert rows == MAX_BATCH_VALUES // values_per_row(cfg) == 475
    pool = pa.default_memory_pool()
    tracemalloc.start()
    arrow_start = pool.bytes_allocated()
    arrow_peak, count, life_values, longest = 0, 0, 0, 0
    for _, batch in build_ctr_samples(ev, cfg, SplitAssigner(SplitConfig(kind="last_k"))):
        count += batch.num_rows
        lens = np.diff(batch.column("life_order").offsets.to_numpy())
        life_values += int(lens.sum())
        longest = max(longest, int(lens.max()))
        arrow_peak = max(arrow_peak, pool.bytes_allocated() - arrow_start)
        del batch
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n and longest == life
    assert life_values == sum(min(i, life) for i in range(n))
    one_batch = rows * values_per_row(cfg) * 8  # every list value as 8 bytes: ~32 MB
    all_samples = life_values * 4 * 8  # the four lifelong lists alone, ~7.6 GB
    own_events = n * 8 * 64
    assert numpy_peak < own_events + 4 * one_batch, numpy_peak
    assert numpy_peak < all_samples // 50, (numpy_peak, all_samples)
    assert arrow_peak < 4 * one_batch, arrow_peak


def rows_by_split(events, cfg, split_cfg=None, side=None, **kwargs):
    """{split: pyarrow.Table of every batch of that split, in order}, and the sizes of
    the batches."""
    import pyarrow as pa

    from tfnegseq.schema import arrow_schema

    splitter = SplitAssigner(split_cfg or SplitConfig(kind="last_k", k=7))
    got, sizes = {}, []
    for split, batch in build_ctr_samples(events, cfg, splitter, side, **kwargs):
        got.setdefault(split, []).append(batch)
        sizes.append(batch.num_rows)
    schema = arrow_schema(cfg)
    return {s: pa.Table.from_batches(b, schema=schema) for s, b in got.items()}, sizes


@pytest.mark.parametrize("extra", [
    {},
    {"target_stride": 3, "max_targets_per_user": 50},
    {"negatives": {"kind": "uniform", "per_positive": 2}},
    {"negatives": {"kind": "uniform", "mode": "replace"}},
])
def test_the_row_budget_never_changes_the_samples(extra):
    """A tiny value budget (a few targets per batch) and an unlimited one give the same
    samples in the same order, for every split."""
    from tfnegseq.config.sections import NegativesConfig
    from tfnegseq.data.samples import values_per_row

    rng = np.random.default_rng(5)
    n = 400
    ev = make_events(3, rng.integers(0, 60, n), np.sort(rng.integers(0, 150, n)),
                     rng.choice([1, -1, 0], n), values=rng.random(n))
    if "negatives" in extra:
        extra = {**extra, "negatives": NegativesConfig(**extra["negatives"])}
    cfg = SamplesConfig(max_history=6, lifelong_length=40, item_features=["genre"],
                        batch_size=64, **extra)
    side = SideTables(items={i: {"genre": i % 7} for i in range(0, 200, 2)})
    catalogue = np.arange(200)
    small, small_sizes = rows_by_split(ev, cfg, side=side, catalogue=catalogue,
                                       max_batch_values=3 * values_per_row(cfg))
    big, big_sizes = rows_by_split(ev, cfg, side=side, catalogue=catalogue,
                                   max_batch_values=10**12)
    assert max(small_sizes) <= 9 and max(big_sizes) > 9
    assert small.keys() == big.keys() == {0, 1, 2}
    for s in big:
        assert small[s].equals(big[s]), s


def test_select_targets_and_targets_per_batch():
    from tfnegseq.data.samples import select_targets, targets_per_batch

    assert select_targets(10, SamplesConfig(target_stride=3)).tolist() == [0, 3, 6, 9]
    assert select_targets(10, SamplesConfig(target_stride=3, max_targets_per_user=2)
                          ).tolist() == [6, 9]
    assert select_targets(3, SamplesConfig(max_targets_per_user=1)).tolist() == [2]
    assert select_targets(4, SamplesConfig()).tolist() == [0, 1, 2, 3]
    assert targets_per_batch(SamplesConfig(batch_size=100)) == 100
    cfg = SamplesConfig(max_history=100, lifelong_length=2000)
    assert targets_per_batch(cfg) == 4_000_000 // 8405
    assert targets_per_batch(cfg, max_batch_values=10) == 1


@pytest.mark.parametrize("before", ["timestamp", "order"])
def test_thinning_keeps_the_histories_of_the_kept_targets(before):
    """Thinned targets are a subset of the full build's rows, identical to them (the
    histories still hold every event); the last event is always a target."""
    rng = np.random.default_rng(2)
    n = 150
    ev = make_events(2, rng.integers(0, 40, n), np.sort(rng.integers(0, 60, n)),
                     rng.choice([1, -1, 0], n), values=rng.random(n))
    full = all_rows(ev, SamplesConfig(max_history=8, lifelong_length=30, before=before))
    thin = all_rows(ev, SamplesConfig(max_history=8, lifelong_length=30, before=before,
                                      target_stride=4, max_targets_per_user=20))
    want = [r for r in full if (n - r["order"]) % 4 == 0][-20:]
    assert thin == want and thin[-1]["order"] == n


def test_thinned_vocab_counts_history_items_once_per_event():
    """With thinning, `ctr_vocab_counts(..., seen)` counts each event's item once,
    whether the event is a target or only in a history; without thinning it adds
    nothing to the per-sample counts."""
    from collections import Counter

    rng = np.random.default_rng(4)
    n = 120
    items = rng.integers(0, 30, n)
    ev = make_events(5, items, np.arange(n), rng.choice([1, -1, 0], n))
    splitter = SplitAssigner(SplitConfig(kind="user", valid_fraction=0, test_fraction=0))

    def vocab(cfg, with_seen):
        seen = np.zeros(n + 1, bool) if with_seen else None
        out = Counter()
        for _, batch in build_ctr_samples(ev, cfg, splitter, max_batch_values=400):
            out.update(ctr_vocab_counts(batch, cfg, seen))
        return Counter({i: c for (name, i), c in out.items() if name == "item_id"})

    plain = SamplesConfig(max_history=5, lifelong_length=10)
    assert vocab(plain, True) == vocab(plain, False) == Counter(items.tolist())
    thin = SamplesConfig(max_history=5, lifelong_length=10, target_stride=7)
    rows = all_rows(ev, thin)
    held = {r["order"] for r in rows}  # targets, and every event in a history
    for r in rows:
        held.update(r["pos_order"] + r["neg_order"] + r["life_order"])
    assert vocab(thin, True) == Counter(items[o - 1] for o in held)
    assert sum(vocab(thin, False).values()) == len(rows) < len(held)
