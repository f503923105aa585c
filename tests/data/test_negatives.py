"""Generated negatives (`samples.negatives`) for positive-only logs: the pure functions
of `tfnegseq.data.negatives`, `build_ctr_samples` with them, and the Beam job on a
tiny hand-written Taobao `UserBehavior.csv`."""

import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from tests.data.test_beam import pipeline
from tests.helpers_data import read_dead_letters, read_split, read_tsv, split_multiset
from tfnegseq.config import ConfigError, SamplesConfig, SplitConfig, config_from_dict
from tfnegseq.config.sections import NegativesConfig
from tfnegseq.data import job
from tfnegseq.data.beam import CHUNKS, DEAD_LETTER, ItemCatalogue, ReadEvents, UnionIdsFn
from tfnegseq.data.events import EventChunk
from tfnegseq.data.negatives import check_catalogue, draw_negatives, free_items, target_rows
from tfnegseq.data.rules import apply_rules
from tfnegseq.data.samples import SideTables, SplitAssigner, build_ctr_samples
from tfnegseq.data.sources import make_source
from tfnegseq.schema import PAD_ID

T0 = 1511544000  # 2017-11-24T17:20Z, inside the Taobao log's days (seconds)

# (user, item, category, behaviour, seconds after T0); one row the source refuses
ROWS = [
    (1, 10, 100, "pv", 0), (1, 11, 100, "pv", 5), (1, 12, 101, "cart", 5),
    (1, 10, 100, "buy", 9), (1, 13, 102, "fav", 20), (1, 14, 102, "pv", 31),
    (2, 20, 200, "pv", 2), (2, 21, 200, "pv", 4), (2, 10, 100, "pv", 6),
    (2, 22, 201, "fav", 6), (2, 23, 201, "buy", 50),
    (3, 30, 300, "pv", 1), (3, 31, 300, "cart", 3), (3, 32, 301, "pv", 8),
    (3, 33, 301, "pv", 8), (3, 34, 302, "buy", 13), (3, 35, 302, "pv", 40),
    (4, 40, 400, "pv", 7), (4, 41, 400, "pv", 11),
    (5, 50, 500, "pv", 3), (5, 51, 500, "pv", 4), (5, 52, 500, "pv", 6),
]
BAD_LINE = 9  # "2,20,200,click,...": an unknown behaviour type
CATALOGUE_EXTRA = [(6, i, 600 + i % 3, "pv", 60 + i) for i in range(60, 90)]


def write_userbehavior(path, rows=ROWS + CATALOGUE_EXTRA, bad_line=BAD_LINE):
    """UserBehavior.csv (no header) of `rows`, with the bad row at 1-based `bad_line`;
    returns the rows as the file holds them, in line order (None for the bad one)."""
    path.mkdir(parents=True, exist_ok=True)
    lines = [f"{u},{i},{c},{b},{T0 + s}" for u, i, c, b, s in rows]
    in_file = list(rows)
    if bad_line:
        lines.insert(bad_line - 1, f"2,20,200,click,{T0 + 3}")
        in_file.insert(bad_line - 1, None)
    (path / "UserBehavior.csv").write_text("\n".join(lines) + "\n")
    return in_file


def taobao_cfg(src, out, seed=0, **samples):
    return config_from_dict({
        "name": "taobao_tiny",
        "source": {"kind": "taobao", "path": str(src)},
        "rules": {"label": ["behavior >= 1"], "positive": ["behavior >= 1"], "negative": []},
        "samples": {"max_history": 5, "lifelong_length": 4, "item_features": ["category"],
                    "negatives": {"kind": "uniform", "per_positive": 2, "seed": seed},
                    **samples},
        "model": {"sequence_length": 10},
        "split": {"kind": "last_k", "k": 1},
        "output": {"dir": str(out), "shards": 1},
    })


def timelines(in_file):
    """user -> that user's rows sorted by (timestamp, line): (item, category, seconds)."""
    by_user = {}
    for line, r in enumerate(in_file, start=1):
        if r is not None:
            by_user.setdefault(r[0], []).append((r[4], line, r[1], r[2]))
    return {u: [(i, c, s) for s, _, i, c in sorted(v)] for u, v in by_user.items()}


# ------------------------------------------------------------------ pure functions


def test_free_items_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        catalogue = np.unique(rng.integers(0, 200, 80))
        user = rng.integers(0, 220, rng.integers(0, 40))  # some ids outside the catalogue
        free = [i for i in catalogue.tolist() if i not in set(user.tolist())]
        got = free_items(catalogue, user, np.arange(len(free)))
        assert got.tolist() == free
    assert check_catalogue(np.array([1, 4, 9], np.int32)).dtype == np.int64
    for bad in ([3, 1], [1, 1], [[1, 2]]):
        with pytest.raises(ValueError, match="1-D array of sorted unique ids"):
            check_catalogue(np.array(bad))


def test_draws_are_uniform_over_the_free_items_and_seeded_by_seed_and_user():
    catalogue = np.arange(10)
    cfg = NegativesConfig(kind="uniform", per_positive=3, seed=4)
    user_items = np.array([2, 5, 5, 7])
    d = draw_negatives(cfg, 17, np.repeat(user_items, 1000), catalogue)
    assert d.items.shape == (4000, 3)
    counts = np.bincount(d.items.ravel(), minlength=10)
    assert counts[[2, 5, 7]].sum() == 0
    free = counts[[0, 1, 3, 4, 6, 8, 9]]
    assert np.all(np.abs(free / free.sum() - 1 / 7) < 0.01), free
    again = draw_negatives(cfg, 17, np.repeat(user_items, 1000), catalogue)
    np.testing.assert_array_equal(d.items, again.items)
    other_user = draw_negatives(cfg, 18, np.repeat(user_items, 1000), catalogue)
    other_seed = draw_negatives(NegativesConfig(kind="uniform", per_positive=3, seed=5), 17,
                                np.repeat(user_items, 1000), catalogue)
    assert not np.array_equal(d.items, other_user.items)
    assert not np.array_equal(d.items, other_seed.items)
    assert not d.replace.any()  # mode "add"


def test_target_rows_add_and_replace():
    item = np.array([5, 6, 7, 8])
    label = np.array([1, 0, 1, 1])
    draws = draw_negatives(NegativesConfig(kind="uniform", per_positive=2), 1, item,
                           np.arange(20))
    rows = target_rows(np.array([0, 1, 3]), item, label,
                       NegativesConfig(kind="uniform", per_positive=2), draws)
    assert rows.src.tolist() == [0, 0, 0, 1, 3, 3, 3]
    assert rows.label.tolist() == [1, 0, 0, 0, 1, 0, 0]
    assert rows.generated.tolist() == [False, True, True, False, False, True, True]
    assert rows.item[[0, 3, 4]].tolist() == [5, 6, 8]
    assert rows.item[[1, 2]].tolist() == draws.items[0].tolist()
    rep = draw_negatives(NegativesConfig(kind="uniform", mode="replace"), 1, item, np.arange(20))
    rows = target_rows(np.arange(4), item, label, NegativesConfig(kind="uniform",
                                                                  mode="replace"), rep)
    flip = rep.replace & (label == 1)
    assert rows.src.tolist() == [0, 1, 2, 3]
    assert rows.label.tolist() == np.where(flip, 0, label).tolist()
    assert rows.item.tolist() == np.where(flip, rep.items[:, 0], item).tolist()


def test_config_refusals():
    with pytest.raises(ConfigError, match=r"samples.negatives.per_positive: must be 1 with "
                                          "mode 'replace'"):
        config_from_dict({"samples": {"negatives": {"kind": "uniform", "mode": "replace",
                                                    "per_positive": 2}}})
    with pytest.raises(ConfigError, match=r"samples.negatives.per_positive: must be >= 1"):
        config_from_dict({"samples": {"negatives": {"kind": "uniform", "per_positive": 0}}})
    with pytest.raises(ConfigError, match=r"unknown key 'samples.negatives.kinds'"):
        config_from_dict({"samples": {"negatives": {"kinds": "uniform"}}})
    with pytest.raises(ValueError, match="negatives: only for the ctr task"):
        SamplesConfig(task="sequential", negatives=NegativesConfig(kind="uniform"))
    with pytest.raises(ValueError, match="target_stride / max_targets_per_user: only for"):
        SamplesConfig(task="sequential", target_stride=2)
    with pytest.raises(ConfigError, match=r"samples.target_stride: must be >= 1"):
        config_from_dict({"samples": {"target_stride": 0}})


def user_events(src_dir, cfg):
    """user -> that user's labelled EventChunk, read by the Taobao source."""
    src = make_source(cfg.source)
    chunks = [apply_rules(c, cfg.rules)
              for c, _ in src.read_chunks(0, str(src_dir / "UserBehavior.csv"), 7)]
    return {u: ev for u, ev in EventChunk.concat(chunks).split_by_user()}


def test_a_user_who_covers_the_catalogue_cannot_get_negatives(tmp_path):
    write_userbehavior(tmp_path, ROWS, bad_line=0)
    cfg = taobao_cfg(tmp_path, tmp_path / "out")
    ev = user_events(tmp_path, cfg)[4]
    splitter = SplitAssigner(cfg.split)
    with pytest.raises(ValueError, match="user 4 has events on all 2 items of the catalogue"):
        next(build_ctr_samples(ev, cfg.samples, splitter, catalogue=np.array([40, 41])))
    with pytest.raises(ValueError, match="needs the item catalogue"):
        next(build_ctr_samples(ev, cfg.samples, splitter))


def test_a_negative_never_takes_its_positives_per_event_feature():
    """An item feature the item table lacks comes from the target event's own column
    (Taobao's category_id is one); a generated negative gets its item's table value or
    PAD_ID, never the positive's (that would give the label away)."""
    n = 6
    ev = EventChunk(user_id=np.full(n, 3), item_id=np.arange(n), timestamp=np.arange(n) * 1000,
                    value=np.ones(n), file_index=np.zeros(n), line=np.arange(1, n + 1),
                    columns={"genre": np.arange(n) + 50.0, "shade": np.arange(n) + 70.0},
                    label=np.ones(n), polarity=np.ones(n))
    cfg = SamplesConfig(max_history=3, item_features=["genre", "shade"],
                        negatives=NegativesConfig(kind="uniform", per_positive=1))
    side = SideTables(items={i: {"genre": 900 + i} for i in range(6, 40)})
    splitter = SplitAssigner(SplitConfig(kind="user", valid_fraction=0, test_fraction=0))
    rows = [r for _, b in build_ctr_samples(ev, cfg, splitter, side,
                                            catalogue=np.arange(40)) for r in b.to_pylist()]
    assert len(rows) == 2 * n
    for pos, neg in zip(rows[::2], rows[1::2], strict=True):
        assert pos["label"] == [1] and neg["label"] == [0]
        assert pos["item_shade"] == [pos["item_id"][0] + 70]  # from the event
        assert neg["item_shade"] == [PAD_ID]  # not in the table: padding
        assert neg["item_genre"] == [900 + neg["item_id"][0]]  # the drawn item's own
        assert 6 <= neg["item_id"][0] < 40
        assert neg["pos_item_id"] == pos["pos_item_id"] and neg["order"] == pos["order"]


def test_mimn_protocol_one_sample_per_user_half_replaced(tmp_path):
    """MIMN's Taobao samples: one sample per user (the last behaviour), its item
    replaced by a catalogue item the user never touched, label 0, with probability
    0.5; history = every earlier behaviour (`before: order`)."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(400):
        for _ in range(int(rng.integers(2, 12))):
            item = int(rng.integers(0, 300))
            rows.append((u, item, item % 9, str(rng.choice(["pv", "cart", "fav", "buy"])),
                         int(rng.integers(0, 1000))))
    in_file = write_userbehavior(tmp_path, rows, bad_line=0)
    cfg = taobao_cfg(tmp_path, tmp_path / "out", seed=11, before="order", max_history=20,
                     lifelong_length=20, max_targets_per_user=1,
                     negatives={"kind": "uniform", "mode": "replace", "seed": 11})
    catalogue = np.unique([r[1] for r in rows])
    side = SideTables(items=make_source(cfg.source).item_table(["category"]).to_dict())
    splitter = SplitAssigner(SplitConfig(kind="user", valid_fraction=0, test_fraction=0))
    by_user = timelines(in_file)

    def build():
        out = []
        for _, ev in sorted(user_events(tmp_path, cfg).items()):
            for _split, batch in build_ctr_samples(ev, cfg.samples, splitter, side,
                                                   catalogue=catalogue):
                out += batch.to_pylist()
        return out

    got = build()
    assert len(got) == 400  # one sample per user
    assert got == build()  # deterministic
    replaced = 0
    for r in got:
        u = r["user_id"][0]
        line = by_user[u]
        assert r["order"] == [len(line)]  # the last behaviour is the target
        assert r["life_item_id"] == [i for i, _, _ in line[:-1]][-20:]
        if r["label"] == [0]:
            replaced += 1
            assert r["item_id"][0] not in {i for i, _, _ in line}
            assert r["item_category"] == [r["item_id"][0] % 9]
        else:
            assert r["item_id"] == [line[-1][0]]
    assert 160 <= replaced <= 240  # Binomial(400, 0.5): 6 standard deviations


# ---------------------------------------------------------------------- the Beam job


@pytest.fixture(scope="module")
def taobao_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("taobao")
    in_file = write_userbehavior(root / "log")
    cfg = taobao_cfg(root / "log", root / "out")
    manifest = job.run(cfg)
    recs = [r | {"split": s} for s in ("train", "valid", "test")
            for r in read_split(root / "out", s)]
    return root, in_file, cfg, manifest, recs


def test_taobao_job_counts_and_dead_letters(taobao_job):
    root, in_file, _, manifest, recs = taobao_job
    events = [r for r in in_file if r is not None]
    positives = [r for r in recs if r["label"] == [1]]
    negatives = [r for r in recs if r["label"] == [0]]
    assert len(positives) == len(events)  # every behaviour is a positive target
    assert len(negatives) == 2 * len(events)  # per_positive: 2
    assert manifest["total_samples"] == 3 * len(events)
    assert manifest["positive_rate"] == {s: pytest.approx(1 / 3) for s in ("train", "valid",
                                                                        "test")}
    # last_k counts targets: each user's last event is test, the one before valid
    assert manifest["samples"] == {"train": 3 * (len(events) - 12), "valid": 18, "test": 18}
    assert manifest["dead_letters"] == 1 and manifest["counters"]["dead_letters_bad_behavior_type"] == 1
    dead = read_dead_letters(root / "out")
    assert [(d["line"], d["reason"].split(";")[0]) for d in dead] == [
        (BAD_LINE, "behavior_type: unknown value 'click'")]


def test_taobao_negatives_are_never_the_users_items_and_keep_the_histories(taobao_job):
    _, in_file, _, _, recs = taobao_job
    by_user = timelines(in_file)
    category = {}
    for r in in_file:
        if r is not None:
            category.setdefault(r[1], r[2])
    positive_of = {(r["user_id"][0], r["order"][0]): r for r in recs if r["label"] == [1]}
    lists = [k for k in recs[0] if k.startswith(("pos_", "neg_", "life_"))]
    assert {"pos_item_id", "life_item_id", "life_value"} <= set(lists)
    for r in recs:
        if r["label"] == [1]:
            continue
        u = r["user_id"][0]
        assert r["item_id"][0] not in {i for i, _, _ in by_user[u]}
        assert r["item_id"][0] in category  # from the catalogue
        assert r["item_category"] == [category[r["item_id"][0]]]
        pos = positive_of[(u, r["order"][0])]
        assert r["timestamp"] == pos["timestamp"] and r["split"] == pos["split"]
        for k in lists:
            assert r.get(k, []) == pos.get(k, []), k


def test_taobao_history_excludes_the_target_and_everything_after(taobao_job):
    _, in_file, cfg, _, recs = taobao_job
    by_user = timelines(in_file)
    for r in recs:
        line = by_user[r["user_id"][0]]
        o = r["order"][0]
        t = line[o - 1][2]
        assert (T0 + t) * 1000 == r["timestamp"][0]
        assert r["life_order"] == sorted(r["life_order"])  # oldest first
        assert len(r["life_order"]) <= cfg.samples.lifelong_length
        earlier = [k + 1 for k, (_, _, s) in enumerate(line) if s < t]  # strictly before
        assert r["life_order"] == earlier[-cfg.samples.lifelong_length:]
        assert r["pos_order"] == earlier[-cfg.samples.max_history:]
        assert r["life_item_id"] == [line[k - 1][0] for k in r["life_order"]]
        assert r.get("neg_order", []) == []  # Taobao has no negative behaviours


def test_taobao_job_is_deterministic_for_a_seed(taobao_job, tmp_path):
    root, _, cfg, _, _ = taobao_job
    job.run(taobao_cfg(root / "log", tmp_path / "same"))
    job.run(taobao_cfg(root / "log", tmp_path / "other", seed=1))
    for s in ("train", "valid", "test"):
        assert split_multiset(tmp_path / "same", s) == split_multiset(root / "out", s)
    assert split_multiset(tmp_path / "other", "train") != split_multiset(root / "out", "train")


def test_taobao_vocabulary_counts_the_train_negatives(taobao_job):
    root, _, _, _, recs = taobao_job
    items = read_tsv(root / "out" / "vocab" / "item_id.tsv")
    train = [r for r in recs if r["split"] == "train"]
    want = {}
    for r in train:
        want[r["item_id"][0]] = want.get(r["item_id"][0], 0) + 1
    assert items == want
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert manifest["config"]["samples"]["negatives"]["kind"] == "uniform"


def test_item_catalogue_is_every_parsed_item(tmp_path):
    in_file = write_userbehavior(tmp_path)
    cfg = taobao_cfg(tmp_path, tmp_path / "out")
    want = sorted({r[1] for r in in_file if r is not None})
    with pipeline() as p:
        read = (p
                | "Files" >> beam.Create([(0, str(tmp_path / "UserBehavior.csv"))])
                | "Read" >> ReadEvents(cfg))
        catalogue = read[CHUNKS] | "Catalogue" >> ItemCatalogue()
        assert_that(catalogue | "ToList" >> beam.Map(lambda a: a.tolist()), equal_to([want]),
                    label="check_catalogue")
        assert_that(read[DEAD_LETTER] | "Lines" >> beam.Map(lambda d: d["line"]),
                    equal_to([BAD_LINE]), label="check_dead_letter")


def test_union_ids_compacts_and_merges():
    fn = UnionIdsFn()
    fn.COMPACT_IDS = 3
    acc = fn.create_accumulator()
    for ids in ([5, 1], [1, 2, 2], [9], [5, 5, 5, 5], [0]):
        acc = fn.add_input(acc, np.array(ids))
    other = fn.add_input(fn.create_accumulator(), np.array([7, 1]))
    merged = fn.merge_accumulators([acc, fn.create_accumulator(), other])
    assert fn.extract_output(merged).tolist() == [0, 1, 2, 5, 7, 9]
    assert fn.extract_output(fn.create_accumulator()).tolist() == []
