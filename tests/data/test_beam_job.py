"""The Beam sample-building job end to end on small KuaiRec-layout files."""

import glob
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers_data import (
    T0,
    make_cfg,
    read_split,
    read_tsv,
    sequential_cfg,
    write_log,
    write_rows,
)
from tfnegseq.config import config_from_dict
from tfnegseq.data import job


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam")
    rows = write_log(root / "log", np.random.default_rng(0))
    cfg = make_cfg(root / "log", root / "out")
    manifest = job.run(cfg)
    return root, rows, cfg, manifest


def test_every_row_becomes_exactly_one_sample(built):
    root, rows, cfg, manifest = built
    samples = {s: read_split(root / "out", s) for s in ("train", "valid", "test")}
    got = sorted((r["user_id"][0], r["item_id"][0], r["timestamp"][0], r["label"][0])
                 for recs in samples.values() for r in recs)
    assert got == sorted(rows)
    assert manifest["samples"] == {s: len(v) for s, v in samples.items()}
    assert manifest["dead_letters"] == 0
    # user split: every user's samples in exactly one split
    users = {s: {r["user_id"][0] for r in v} for s, v in samples.items()}
    assert not (users["train"] & users["valid"]) and not (users["train"] & users["test"])
    assert not (users["valid"] & users["test"])


def test_no_history_holds_its_own_or_a_later_event(built):
    root, _, _, _ = built
    for split in ("train", "valid", "test"):
        by_user = {}
        recs = read_split(root / "out", split)
        for r in recs:
            by_user.setdefault(r["user_id"][0], {})[r["order"][0]] = r
        for r in recs:
            timeline = by_user[r["user_id"][0]]
            for o in r["pos_order"] + r["neg_order"]:
                assert o < r["order"][0]
                assert timeline[o]["timestamp"][0] < r["timestamp"][0]
            for o in r["pos_order"]:
                assert timeline[o]["label"][0] == 1
            for o in r["neg_order"]:
                assert timeline[o]["label"][0] == 0
            assert len(r["pos_item_id"]) <= 5 and len(r["neg_item_id"]) <= 5


def test_manifest_schema_and_vocab(built):
    root, rows, cfg, manifest = built
    out = root / "out"
    m = json.load(open(out / "manifest.json"))
    assert m["total_samples"] == len(rows)
    assert m["config_hash"] == cfg.hash()
    pos_rate = sum(r[3] for r in rows) / len(rows)
    total_pos = sum(m["positive_rate"][s] * m["samples"][s] for s in m["samples"] if m["samples"][s])
    assert total_pos == pytest.approx(pos_rate * len(rows))
    vocab = dict(line.split("\t") for line in open(out / "vocab" / "item_id.tsv").read().split("\n") if line)
    train_users = {r["user_id"][0] for r in read_split(out, "train")}
    items = {}
    for r in rows:
        if r[0] in train_users:  # vocabularies count the train split only
            items[r[1]] = items.get(r[1], 0) + 1
    assert {int(k): int(v) for k, v in vocab.items()} == items
    assert m["vocab_sizes"]["item_id"] == len(items)
    assert "pos_item_id" in open(out / "schema.pbtxt").read()


def test_dead_letters_counted_exactly(tmp_path):
    rng = np.random.default_rng(1)
    rows = write_log(tmp_path / "log", rng, users=3, per_user=10)
    path = tmp_path / "log" / "big_matrix.csv"
    lines = open(path).read().splitlines()
    bad = [
        "1,2,3",  # wrong column count
        "abc,5,1000,10000,2020-07-05 00:00:00.000,20200705,1593878400.000,0.1",  # id
        "1,5,1000,10000,,20200705,,0.1",  # missing timestamp
        "1,5,1000,10000,2020-07-05 00:00:00.000,20200705,1593878400.000,nan",  # NaN
    ]
    # insert after lines 3, 6, 9, 12 of the data
    for k, b in enumerate(bad):
        lines.insert(3 + 3 * k + k, b)
    open(path, "w").write("\n".join(lines) + "\n")
    bad_lines = [i + 1 for i, line in enumerate(lines) if line in bad]
    cfg = make_cfg(tmp_path / "log", tmp_path / "out")
    manifest = job.run(cfg)
    assert manifest["dead_letters"] == 4
    assert manifest["total_samples"] == len(rows)
    dead = [json.loads(x) for f in glob.glob(str(tmp_path / "out" / "dead_letters" / "*"))
            for x in open(f).read().splitlines()]
    assert sorted(d["line"] for d in dead) == bad_lines
    assert all(d["file"].endswith("big_matrix.csv") and d["reason"] and d["raw"] in bad for d in dead)


def test_multiprocessing_runner_gives_the_same_samples(built, tmp_path):
    root, _, cfg, _ = built
    cfg2 = make_cfg(cfg.source.path, tmp_path / "out")
    job.run(cfg2, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    for split in ("train", "valid", "test"):
        a = sorted(json.dumps(r, sort_keys=True) for r in read_split(root / "out", split))
        b = sorted(json.dumps(r, sort_keys=True) for r in read_split(tmp_path / "out", split))
        assert a == b


def test_tf_data_yields_the_schema_shapes(built):
    from tfnegseq import schema
    from tfnegseq.data.input import make_dataset

    root, _, cfg, _ = built
    ds = make_dataset(str(root / "out"), "train", cfg, batch_size=8, training=True, seed=0)
    features, label = next(iter(ds))
    assert label.shape == (8,) and label.dtype == tf.float32
    for f in schema.features(cfg.samples):
        if f.name == "label":
            continue
        want = (8, f.max_len) if f.is_list else (8,)
        assert tuple(features[f.name].shape) == want, f.name
    # padding is on the left, orders increase to the right among real slots
    o = features["pos_order"].numpy()
    ids = features["pos_item_id"].numpy()
    for row_o, row_i in zip(o, ids, strict=True):
        real = row_o > 0
        assert (row_i[real] > 0).all() and (row_i[~real] == 0).all()
        if real.any():
            first = np.argmax(real)
            assert real[first:].all() and (np.diff(row_o[real]) > 0).all()


def test_tf_data_declares_the_manifest_batch_count_and_refuses_a_mismatch(built, tmp_path):
    import shutil

    from tfnegseq.data.input import make_dataset

    root, _, cfg, _ = built
    out = root / "out"
    n = json.loads((out / "manifest.json").read_text())["samples"]["train"]
    for training, want in ((True, n // 8), (False, -(-n // 8))):
        ds = make_dataset(str(out), "train", cfg, batch_size=8, training=training, seed=0)
        assert int(ds.cardinality()) == want
        assert sum(1 for _ in ds) == want  # what it declares is what it yields
    # a manifest that over-counts (a shard lost after the job ran): a clear error
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["samples"]["train"] = n + 100
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain"):
        for _ in make_dataset(str(copy), "train", cfg, batch_size=8, training=True, seed=0):
            pass


def test_ml100k_writes_a_sample_per_rating(ml100k_dir, tmp_path):
    from tfnegseq.config import load_config

    cfg = load_config("configs/movielens_100k.yaml",
                      [f"source.path={ml100k_dir}", f"output.dir={tmp_path}/out"])
    manifest = job.run(cfg)
    assert manifest["total_samples"] == 100_000
    assert manifest["dead_letters"] == 0
    # users are counted over the temporal split's train period only (not all 943 have one)
    train_users = {r["user_id"][0] for r in read_split(tmp_path / "out", "train")}
    assert manifest["vocab_sizes"]["user_id"] == len(train_users) < 943


def test_sequential_task_one_example_per_user_with_kcore(tmp_path):
    from tfnegseq.data.samples import kcore_mask

    rows = write_log(tmp_path / "log", np.random.default_rng(3), users=10, per_user=30)
    cfg = sequential_cfg({
        "source": {"kind": "kuairec", "path": str(tmp_path / "log")},
        "rules": {"label": [], "positive": ["watch_ratio >= 2.0"],
                  "negative": ["watch_ratio < 0.5"]},
        "samples": {"task": "sequential", "min_core": 5, "max_sequence": 50},
        "output": {"dir": str(tmp_path / "out"), "shards": 1},
    })
    manifest = job.run(cfg)
    users = np.array([r[0] for r in rows])
    items = np.array([r[1] for r in rows])
    keep = kcore_mask(users, items, 5)
    assert manifest["kcore_residual_events"] == 0
    recs = read_split(tmp_path / "out", "sequences")
    assert manifest["samples"] == {"sequences": len(recs)}
    # independent check per user: k-core filtered events, then leave-last-two positives
    ratio = {}
    for line in open(tmp_path / "log" / "big_matrix.csv").read().splitlines()[1:]:
        f = line.split(",")
        ratio.setdefault(int(f[0]), []).append((float(f[6]), int(f[1]), float(f[7])))
    expected = {}
    for u in sorted(set(users[keep].tolist())):
        kept_items = set(items[keep & (users == u)].tolist())
        ev = [e for e in ratio[u] if e[1] in kept_items]
        ev.sort(key=lambda e: e[0])
        pos = [e for e in ev if e[2] >= 2.0]
        if len(pos) >= 3:
            expected[u] = (pos[-1][1], pos[-2][1])
    got = {r["user_id"][0]: (r["test_item_id"][0], r["valid_item_id"][0]) for r in recs}
    assert got == expected
    for r in recs:
        assert r["seq_item_id"][r["valid_index"][0]] == r["valid_item_id"][0]
        assert all(p in (1, -1) for p in r["seq_polarity"])


# ------------------------------------------------- vocabularies: training split only


def test_ctr_vocabularies_count_the_training_split_only(tmp_path):
    """Temporal split at T0+1000 s (valid) and T0+2000 s (test): ids are counted over
    train samples only, so an id first seen in test maps to an OOV bucket and min_count
    is decided by train counts (item 200: 1 train, 5 test occurrences)."""
    from tfnegseq.config import VocabConfig
    from tfnegseq.data.vocab import Vocabulary

    rows = [
        (0, 1, 10, 2.5), (0, 200, 20, 0.3), (0, 300, 30, 2.5), (0, 2, 40, 0.3),
        (1, 1, 15, 0.3), (1, 300, 25, 2.5), (1, 2, 35, 2.5),
        (2, 2, 50, 2.5), (2, 1, 60, 0.3),
        (8, 1, 1500, 2.5), (8, 3, 1600, 0.3),  # user 8: valid period only
        (0, 200, 2100, 2.5), (1, 200, 2200, 0.3), (2, 200, 2300, 2.5),
        (0, 200, 2400, 0.3), (1, 200, 2500, 2.5),
        (1, 100, 2600, 2.5), (2, 100, 2700, 0.3),  # item 100: test period only
        (7, 1, 2800, 2.5), (7, 100, 2900, 0.3),  # user 7: test period only
    ]
    write_rows(tmp_path / "log", rows)
    cfg = config_from_dict({
        "source": {"kind": "kuairec", "path": str(tmp_path / "log")},
        "samples": {"max_history": 5},
        "model": {"sequence_length": 10},
        "split": {"kind": "temporal", "valid_start": int((T0 + 1000) * 1000),
                  "test_start": int((T0 + 2000) * 1000)},
        "output": {"dir": str(tmp_path / "out"), "shards": 1},
    })
    manifest = job.run(cfg)
    assert manifest["samples"] == {"train": 9, "valid": 2, "test": 9}
    train = [r for r in rows if r[2] < 1000]
    items = read_tsv(tmp_path / "out" / "vocab" / "item_id.tsv")
    users = read_tsv(tmp_path / "out" / "vocab" / "user_id.tsv")
    want_items, want_users = {}, {}
    for u, i, _, _ in train:
        want_items[i] = want_items.get(i, 0) + 1
        want_users[u] = want_users.get(u, 0) + 1
    assert items == want_items  # {1: 3, 2: 3, 300: 2, 200: 1}
    assert users == want_users  # users 7 and 8 absent
    assert manifest["vocab_sizes"] == {"item_id": 4, "user_id": 3}
    # every id a train sample carries (targets and histories) is in the vocabulary
    for r in read_split(tmp_path / "out", "train"):
        assert set(r["pos_item_id"] + r["neg_item_id"] + r["item_id"]) <= set(items)

    vocab = Vocabulary.load(str(tmp_path / "out"), "item_id",
                            VocabConfig(min_count=2, oov_buckets=4))
    assert sorted(vocab.ids.tolist()) == [1, 2, 300]  # 200 dropped: 1 train occurrence
    rows_of = vocab.lookup_layer()(tf.constant([100, 200, 300, 1, -1], tf.int64)).numpy()
    assert 1 <= rows_of[0] <= 4 and 1 <= rows_of[1] <= 4  # OOV buckets
    assert rows_of[2] > 4 and rows_of[3] > 4 and rows_of[4] == 0
    user_vocab = Vocabulary.load(str(tmp_path / "out"), "user_id", VocabConfig(oov_buckets=4))
    assert 1 <= int(user_vocab.lookup_layer()(tf.constant([7], tf.int64))[0]) <= 4


def test_sequential_vocabularies_count_training_events_only(tmp_path):
    """Sequential task: the training events of a user are the `seq_*` events before the
    validation positive (`seq_*[:valid_index]`); the validation and test targets and the
    events between them are held out, and users without a sample are not counted."""
    P, N = 2.5, 0.3  # noqa: N806 - positive / negative watch ratios
    rows = [
        (0, 1, 1, P), (0, 2, 2, N), (0, 3, 3, P), (0, 4, 4, N), (0, 5, 5, P),
        (0, 6, 6, N), (0, 7, 7, P),  # valid 5, test 7: train 1, 2, 3, 4
        (1, 3, 1, P), (1, 1, 2, P), (1, 8, 3, N), (1, 9, 4, P), (1, 5, 5, P),
        # valid 9, test 5: train 3, 1, 8
        (2, 1, 1, P), (2, 7, 2, P), (2, 2, 3, N),  # 2 positives: no sample
    ]
    write_rows(tmp_path / "log", rows)
    cfg = sequential_cfg({
        "source": {"kind": "kuairec", "path": str(tmp_path / "log")},
        "rules": {"label": [], "positive": ["watch_ratio >= 2.0"],
                  "negative": ["watch_ratio < 0.5"]},
        "samples": {"task": "sequential", "max_sequence": 50},
        "output": {"dir": str(tmp_path / "out"), "shards": 1},
    })
    manifest = job.run(cfg)
    assert manifest["samples"] == {"sequences": 2}
    recs = {r["user_id"][0]: r for r in read_split(tmp_path / "out", "sequences")}
    assert recs[0]["seq_item_id"][recs[0]["valid_index"][0]] == 5
    items = read_tsv(tmp_path / "out" / "vocab" / "item_id.tsv")
    users = read_tsv(tmp_path / "out" / "vocab" / "user_id.tsv")
    assert items == {1: 2, 2: 1, 3: 2, 4: 1, 8: 1}
    assert users == {0: 1, 1: 1}
