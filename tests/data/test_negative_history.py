"""`samples.negative_history`: which negatives fill a CTR sample's negative history
(the mixed-polarity paper's §4.5.4 ablation). Checked against a brute-force per-target
reference over hand-made timelines, the config refusals, the Beam job end to end and
training's refusal of samples built with another setting."""

import itertools
import json

import numpy as np
import pytest

from tests.data.test_samples import make_events
from tests.helpers_data import make_cfg, read_split, write_rows
from tfnegseq.config import ConfigError, SamplesConfig, SplitConfig, config_from_dict
from tfnegseq.config.sections import NegativesConfig
from tfnegseq.data import job
from tfnegseq.data.events import EventChunk
from tfnegseq.data.rules import apply_rules
from tfnegseq.data.samples import SplitAssigner, build_ctr_samples, random_subsets
from tfnegseq.data.sources import make_source
from tfnegseq.runs import check_negative_history, samples_dir

ALL_TRAIN = SplitConfig(kind="user", valid_fraction=0, test_fraction=0)


def timeline(n=400, seed=0, user=9):
    """One user's events: (EventChunk, items, seconds, polarities), many timestamp ties."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 60, n)
    ts = np.sort(rng.integers(0, n // 2, n))
    pols = rng.choice([1, -1, 0], n, p=[0.3, 0.55, 0.15])
    return make_events(user, items, ts, pols), items.tolist(), ts.tolist(), pols.tolist()


def reference(items, ts, pols):
    """Per target, in timeline order: (its order, [(order, item) of every negative
    strictly before it]), the timeline sorted by (timestamp, input order), written
    without the package's code."""
    rank = sorted(range(len(items)), key=lambda i: (ts[i], i))
    order_of = {i: r + 1 for r, i in enumerate(rank)}
    return [(order_of[j], [(order_of[i], items[i]) for i in rank
                           if pols[i] == -1 and ts[i] < ts[j]]) for j in rank]


def rows(events, cfg, catalogue=None):
    """(order, neg_order, neg_item_id, label) of every sample row, in row order."""
    out = []
    for _, batch in build_ctr_samples(events, cfg, SplitAssigner(ALL_TRAIN),
                                      catalogue=catalogue):
        for r in batch.to_pylist():
            out.append((r["order"][0], r["neg_order"], r["neg_item_id"], r["label"][0]))
    return sorted(out, key=lambda r: r[0])


# -------------------------------------------------------------------------- random


def test_random_draws_only_earlier_negatives_min_count_size_oldest_first():
    events, items, ts, pols = timeline()
    size = 6
    cfg = SamplesConfig(max_history=20, negative_history="random", negative_history_size=size,
                        negative_history_seed=3, batch_size=37)
    got = rows(events, cfg)
    ref = reference(items, ts, pols)
    assert [r[0] for r in got] == [o for o, _ in ref]
    drawn_from_far = 0
    for (order, neg_order, neg_items, _), (_, before) in zip(got, ref, strict=True):
        candidates = dict(before)  # order -> item: the user's negatives before the target
        assert len(neg_order) == min(len(before), size)
        assert neg_order == sorted(neg_order) and len(set(neg_order)) == len(neg_order)
        assert all(o < order and o in candidates for o in neg_order)  # never at or after
        assert neg_items == [candidates[o] for o in neg_order]  # true items and orders
        if len(before) > size:
            recent = [o for o, _ in before[-size:]]
            drawn_from_far += neg_order != recent
    assert drawn_from_far > 100  # most long histories are not the most recent ones


def test_random_is_the_same_whatever_the_batching_and_differs_from_recent():
    events, *_ = timeline(seed=1)
    base = dict(max_history=20, negative_history="random", negative_history_size=5,
                negative_history_seed=3)
    a = rows(events, SamplesConfig(**base, batch_size=7))
    b = rows(events, SamplesConfig(**base, batch_size=5000))
    c = rows(events, SamplesConfig(**{**base, "max_history": 5, "negative_history_size": 0},
                                   batch_size=7))
    assert a == b == c  # size 0 means max_history
    # the target's order keys the draw: thinning keeps each kept target's draw
    thinned = rows(events, SamplesConfig(**base, target_stride=3))
    by_order = {r[0]: r for r in a}
    assert 0 < len(thinned) < len(a) and all(by_order[r[0]] == r for r in thinned)
    other_seed = rows(events, SamplesConfig(**{**base, "negative_history_seed": 4}))
    assert other_seed != a
    recent = rows(events, SamplesConfig(max_history=5))
    long = [i for i, r in enumerate(recent) if len(r[1]) == 5 and r[1][0] > 10]
    assert long and any(a[i][1] != recent[i][1] for i in long)
    assert len(a) == len(recent) and all(
        x[0] == y[0] and len(x[1]) == len(y[1]) for x, y in zip(a, recent, strict=True))


def test_random_generated_negatives_share_their_positives_draw():
    events, *_ = timeline(seed=2)
    cfg = SamplesConfig(max_history=10, negative_history="random", negative_history_size=4,
                        negatives=NegativesConfig(kind="uniform", per_positive=2))
    by_order: dict[int, set] = {}
    for order, neg_order, neg_items, _ in rows(events, cfg, catalogue=np.arange(1000)):
        by_order.setdefault(order, set()).add((tuple(neg_order), tuple(neg_items)))
    assert all(len(v) == 1 for v in by_order.values())


def test_random_subsets_are_uniform():
    """Every k-subset of c candidates equally likely (each of the 6 pairs of 4 about
    1/6), and every candidate of 20 in a 5-draw about 5/20 of the time: fixed seeds,
    bounds at 4+ standard deviations, so never flaky."""
    n = 6000
    offsets, idx = random_subsets(np.full(n, 4), 2, 0, 11, np.arange(n))
    pairs = {p: 0 for p in itertools.combinations(range(4), 2)}
    for j in range(n):
        pairs[tuple(idx[offsets[j]:offsets[j + 1]].tolist())] += 1
    assert all(abs(v / n - 1 / 6) < 0.02 for v in pairs.values()), pairs  # sd 0.0048
    offsets, idx = random_subsets(np.full(n, 20), 5, 1, 12, np.arange(n))
    assert np.all(np.diff(offsets) == 5)
    freq = np.bincount(idx, minlength=20) / n
    assert np.all(np.abs(freq - 0.25) < 0.025), freq  # sd 0.0056
    # short rows take everything, in order
    offsets, idx = random_subsets(np.array([0, 3, 5]), 5, 1, 12, np.arange(3))
    assert offsets.tolist() == [0, 0, 3, 8] and idx.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]


def test_random_draws_early_negatives_as_often_as_late_ones():
    """Over every target of a long timeline, the drawn negatives' relative positions
    among the candidates are spread evenly (quarters within 0.03 of 1/4, about 4
    standard deviations); "recent" would put them all in the last quarter."""
    events, items, ts, pols = timeline(n=1500, seed=4)
    size = 8
    cfg = SamplesConfig(max_history=size, negative_history="random")
    got = rows(events, cfg)
    where = []
    for (_, neg_order, _, _), (_, before) in zip(got, reference(items, ts, pols), strict=True):
        if len(before) >= 4 * size:
            rank = {o: r for r, (o, _) in enumerate(before)}
            where += [rank[o] / len(before) for o in neg_order]
    quarters = np.bincount(np.minimum((np.array(where) * 4).astype(int), 3), minlength=4)
    assert len(where) > 3000
    assert np.all(np.abs(quarters / len(where) - 0.25) < 0.03), quarters


# ----------------------------------------------------------------------- catalogue


def test_catalogue_keeps_the_recent_slots_and_draws_items_from_the_catalogue():
    events, items, ts, pols = timeline(seed=5)
    catalogue = np.arange(1000, 1500, 5)
    cfg = SamplesConfig(max_history=7, negative_history="catalogue", negative_history_seed=2,
                        batch_size=13)
    got = rows(events, cfg, catalogue)
    ref = reference(items, ts, pols)
    item_of = {}
    for (order, neg_order, neg_items, _), (ref_order, before) in zip(got, ref, strict=True):
        assert order == ref_order
        assert neg_order == [o for o, _ in before[-7:]]  # "recent"'s count and orders
        assert set(neg_items) <= set(catalogue.tolist())
        for o, i in zip(neg_order, neg_items, strict=True):
            assert item_of.setdefault(o, i) == i  # one replacement per negative event
    # every catalogue item turns up, none much more often than the others
    assert len(set(item_of.values())) > 0.8 * len(catalogue)
    assert rows(events, SamplesConfig(max_history=7, negative_history="catalogue",
                                      negative_history_seed=2, batch_size=1000),
                catalogue) == got
    recent = rows(events, SamplesConfig(max_history=7))
    assert [r[:2] for r in recent] == [r[:2] for r in got]
    other = rows(events, SamplesConfig(max_history=7, negative_history="catalogue"), catalogue)
    assert other != got  # the seed matters
    short = rows(events, SamplesConfig(max_history=7, negative_history="catalogue",
                                       negative_history_size=3), catalogue)
    assert [r[1] for r in short] == [r[1][-3:] for r in recent]
    with pytest.raises(ValueError, match="negative_history 'catalogue': needs the item catalogue"):
        rows(events, cfg)


# -------------------------------------------------------------------------- recent


def test_recent_is_the_default_and_matches_the_reference():
    events, items, ts, pols = timeline(seed=6)
    got = rows(events, SamplesConfig(max_history=5, batch_size=50))
    assert got == rows(events, SamplesConfig(max_history=5, negative_history="recent"))
    for (_, neg_order, neg_items, _), (_, before) in zip(got, reference(items, ts, pols),
                                                           strict=True):
        assert list(zip(neg_order, neg_items, strict=True)) == before[-5:]


# -------------------------------------------------------------------------- config


def test_config_refusals():
    with pytest.raises(ConfigError, match=r"samples.negative_history: must be one of 'recent', "
                                          r"'random' or 'catalogue'. Received: 'universe'"):
        config_from_dict({"samples": {"negative_history": "universe"}})
    with pytest.raises(ConfigError, match=r"samples.negative_history_size: must be <= "
                                          r"max_history \(10\).*Received: 11"):
        config_from_dict({"samples": {"max_history": 10, "negative_history": "random",
                                      "negative_history_size": 11},
                          "model": {"sequence_length": 10}})
    with pytest.raises(ConfigError, match=r"samples.negative_history_size: must be >= 0"):
        config_from_dict({"samples": {"negative_history": "random",
                                      "negative_history_size": -1}})
    for key in ("negative_history_size", "negative_history_seed"):
        with pytest.raises(ConfigError, match=r"negative_history_size / negative_history_seed: "
                                              r"only with negative_history 'random' or "
                                              r"'catalogue'"):
            config_from_dict({"samples": {key: 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'samples.negative_history_sise'"):
        config_from_dict({"samples": {"negative_history_sise": 3}})
    with pytest.raises(ValueError, match="negative_history: only for the ctr task"):
        SamplesConfig(task="sequential", negative_history="random")
    ok = config_from_dict({"samples": {"negative_history": "catalogue",
                                       "negative_history_size": 100,
                                       "negative_history_seed": 7}})
    assert ok.samples.negative_history_length() == 100
    assert SamplesConfig(max_history=30, negative_history="random").negative_history_length() == 30


# ---------------------------------------------------------------------- the Beam job

ROWS = [  # (user, item, seconds after T0, watch_ratio): ratio >= 2 positive, else negative
    *((1, 100 + k, 10 * k, 2.5 if k % 4 == 0 else 0.5) for k in range(30)),
    *((2, 200 + k, 7 * k, 3.0 if k % 3 == 0 else 1.0) for k in range(20)),
    (3, 300, 5, 0.4), (3, 301, 5, 0.3), (3, 302, 9, 2.2),
]


def job_rows(tmp_path, **samples):
    """(manifest, {(user, order): record}) of the job on `ROWS` (max_history 5)."""
    write_rows(tmp_path / "log", ROWS)
    cfg = make_cfg(tmp_path / "log", tmp_path / "out", **samples)
    manifest = job.run(cfg)
    recs = [r for s in ("train", "valid", "test") for r in read_split(tmp_path / "out", s)]
    return cfg, manifest, {(r["user_id"][0], r["order"][0]): r for r in recs}


def test_the_job_writes_random_negative_histories(tmp_path):
    cfg, manifest, recs = job_rows(tmp_path, negative_history="random",
                                   negative_history_size=3, negative_history_seed=1)
    assert manifest["dead_letters"] == 0 and len(recs) == len(ROWS)
    assert manifest["config"]["samples"]["negative_history"] == "random"
    for u in (1, 2, 3):
        mine = [r for r in ROWS if r[0] == u]  # line order is time order (ties: user 3)
        items = [r[1] for r in mine]
        ts = [r[2] for r in mine]
        pols = [1 if r[3] >= 2 else -1 for r in mine]
        for order, before in reference(items, ts, pols):
            rec = recs[(u, order)]
            candidates = dict(before)
            assert len(rec["neg_order"]) == min(len(before), 3)
            assert rec["neg_order"] == sorted(rec["neg_order"])
            assert all(o in candidates for o in rec["neg_order"])
            assert rec["neg_item_id"] == [candidates[o] for o in rec["neg_order"]]
    # the job's draws are the per-user function's (the runner does not matter)
    src = make_source(cfg.source)
    chunks = [apply_rules(c, cfg.rules) for f in src.log_files()
              for c, _ in src.read_chunks(0, f, 1000)]
    for u, ev in EventChunk.concat(chunks).split_by_user():
        for order, neg_order, neg_items, _ in rows(ev, cfg.samples):
            assert (recs[(u, order)]["neg_order"], recs[(u, order)]["neg_item_id"]) == (
                neg_order, neg_items)
    samples_dir(cfg)  # training accepts the samples of its own config


def test_the_job_passes_the_catalogue_for_catalogue_histories(tmp_path):
    _, manifest, recs = job_rows(tmp_path, negative_history="catalogue")
    assert manifest["dead_letters"] == 0 and len(recs) == len(ROWS)
    catalogue = {r[1] for r in ROWS}
    drawn = [i for r in recs.values() for i in r["neg_item_id"]]
    assert drawn and set(drawn) <= catalogue
    for u in (1, 2, 3):
        mine = [r for r in ROWS if r[0] == u]
        ref = reference([r[1] for r in mine], [r[2] for r in mine],
                        [1 if r[3] >= 2 else -1 for r in mine])
        for order, before in ref:
            assert recs[(u, order)]["neg_order"] == [o for o, _ in before[-5:]]


# --------------------------------------------------------------------- training check


def write_manifest(path, samples):
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"config": {"samples": samples}}))


def train_cfg(data_dir, **samples):
    return config_from_dict({"samples": {"max_history": 10, **samples},
                             "model": {"sequence_length": 10},
                             "train": {"data_dir": str(data_dir)}})


def test_training_refuses_samples_built_with_another_negative_history(tmp_path):
    built = tmp_path / "random_samples"
    write_manifest(built, {"max_history": 10, "negative_history": "random",
                           "negative_history_size": 4, "negative_history_seed": 0})
    with pytest.raises(ConfigError, match=(
            r"samples.negative_history is 'recent' in the config but the samples were built "
            r"with 'random'; samples.negative_history_size is 0 in the config but the "
            r"samples were built with 4 \(.*random_samples.*manifest.json\)")):
        samples_dir(train_cfg(built))
    with pytest.raises(ConfigError, match=r"negative_history_size is 5 in the config but the "
                                          r"samples were built with 4"):
        check_negative_history(train_cfg(built, negative_history="random",
                                         negative_history_size=5), str(built))
    check_negative_history(train_cfg(built, negative_history="random",
                                     negative_history_size=4), str(built))
    # a manifest from before the option: "recent", 0, 0
    old = tmp_path / "old_samples"
    write_manifest(old, {"max_history": 10})
    samples_dir(train_cfg(old))
    with pytest.raises(ConfigError, match=r"negative_history is 'catalogue' in the config but "
                                          r"the samples were built with 'recent'"):
        samples_dir(train_cfg(old, negative_history="catalogue"))


def test_training_itself_refuses_before_reading_data(tmp_path):
    from tfnegseq import train

    built = tmp_path / "samples"
    write_manifest(built, {"max_history": 10, "negative_history": "random",
                           "negative_history_size": 0, "negative_history_seed": 3})
    cfg = train_cfg(built, negative_history="random")
    cfg.train.run_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"negative_history_seed is 0 in the config but the "
                                          r"samples were built with 3"):
        train.run_config(cfg)
    assert not (tmp_path / "run").exists()


def test_training_refuses_a_drawn_list_of_another_length(tmp_path):
    """Size 0 means max_history when the samples were built: random lists drawn 20 long
    (max_history 20 then) are no uniform draw of the 10 a max_history-10 config reads."""
    built = tmp_path / "drawn_20"
    write_manifest(built, {"max_history": 20, "negative_history": "random",
                           "negative_history_size": 0, "negative_history_seed": 0})
    with pytest.raises(ConfigError, match=r"negative_history_size \(0 = max_history\) is 10 "
                                          r"in the config but the samples were built with 20"):
        check_negative_history(train_cfg(built, negative_history="random"), str(built))


def test_training_refuses_samples_built_with_another_history_length_or_rules(tmp_path):
    """Not only the negative lists: `samples.max_history` 500 on samples built with 100
    would train on lists padded past their real length (a shorter one is fine), other
    rules or another split label other events, and a side feature the samples lack
    cannot be read (one they hold may go unread); each difference is named. Keys the
    manifest does not record are not compared."""
    built = tmp_path / "samples"
    built.mkdir()
    (built / "manifest.json").write_text(json.dumps({"config": {
        "samples": {"max_history": 100, "min_core": 0, "item_features": ["category"]},
        "rules": {"label": ["rating >= 4"], "positive": ["rating >= 4"],
                  "negative": ["rating <= 2"]}}}))

    def cfg(max_history=100, negative="rating <= 2", item_features=()):
        return config_from_dict({
            "samples": {"max_history": max_history, "item_features": list(item_features)},
            "rules": {"label": ["rating >= 4"], "positive": ["rating >= 4"],
                      "negative": [negative]},
            "model": {"sequence_length": 10}, "train": {"data_dir": str(built)}})

    samples_dir(cfg())
    samples_dir(cfg(max_history=50))  # a shorter list: the most recent 50 of the 100
    with pytest.raises(ConfigError, match=r"samples.max_history is 500 in the config but the "
                                          r"samples were built with 100"):
        samples_dir(cfg(max_history=500))
    with pytest.raises(ConfigError, match=r"rules is .*rating <= 1.* in the config but the "
                                          r"samples were built with .*rating <= 2"):
        samples_dir(cfg(negative="rating <= 1"))
    samples_dir(cfg(item_features=["category"]))  # a side feature may be left unread
    with pytest.raises(ConfigError, match=r"samples.item_features is \['genre'\] in the "
                                          r"config but the samples were built with "
                                          r"\['category'\]"):
        samples_dir(cfg(item_features=["genre"]))


def test_training_refuses_samples_without_the_lifelong_item_lists_it_reads(tmp_path):
    """`samples.lifelong_item_features` names lists the samples must hold: samples built
    before the key existed (a manifest without it) hold none, so a config asking for
    `life_item_genre` is refused, not trained on empty lists; samples that hold the
    lists serve a config that leaves them unread too."""
    old = tmp_path / "old_samples"
    write_manifest(old, {"max_history": 10, "lifelong_length": 8, "item_features": ["genre"]})
    with_lists = tmp_path / "new_samples"
    write_manifest(with_lists, {"max_history": 10, "lifelong_length": 8,
                                "item_features": ["genre"], "lifelong_item_features": ["genre"]})

    def cfg(data_dir, lists):
        return train_cfg(data_dir, lifelong_length=8, item_features=["genre"],
                         lifelong_item_features=lists)

    with pytest.raises(ConfigError, match=r"samples.lifelong_item_features is \['genre'\] in "
                                          r"the config but the samples were built with \[\]"):
        samples_dir(cfg(old, ["genre"]))
    samples_dir(cfg(old, []))
    samples_dir(cfg(with_lists, ["genre"]))
    samples_dir(cfg(with_lists, []))
