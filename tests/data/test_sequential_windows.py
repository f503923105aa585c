"""Sequential-task windows: the numpy reference (tfnegseq.data.sequential) on hand-worked
users, its leakage rules, and the tf.data input (tfnegseq.data.sequential_input) against
it on TFRecords written the way the Beam job writes them."""

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

from tfnegseq.config import SamplesConfig
from tfnegseq.data.events import EventChunk
from tfnegseq.data.samples import build_sequential_sample
from tfnegseq.data.sequential import resolve_buckets, user_windows
from tfnegseq.data.sequential_input import (
    FEEDBACK_SCALE,
    LOSS_SCALE,
    SCALE_KEYS,
    SequentialWindows,
    group_by_length,
    make_sequential_dataset,
)
from tfnegseq.data.vocab import Vocabulary
from tfnegseq.schema import PAD_ID, arrow_schema

# ---------------------------------------------------------------- notation helpers


def item(name):
    """Letters as item ids ('a' -> 1, ...); '.' is padding."""
    return PAD_ID if name == "." else ord(name) - ord("a") + 1


def ids(names):
    return [item(n) for n in names.split()] if names else []


def example(timeline):
    """A sequential example from '+a -x ~n +b:valid -y +c:test' (+ positive, - skip,
    ~ neutral; the test target ends the timeline and is not in `seq_*`)."""
    seq, pol, valid_index, valid, test = [], [], None, None, None
    for tok in timeline.split():
        sign, name = tok[0], tok[1:]
        tag = None
        if ":" in name:
            name, tag = name.split(":")
        if tag == "test":
            test = item(name)
            break
        if tag == "valid":
            valid_index, valid = len(seq), item(name)
        seq.append(item(name))
        pol.append({"+": 1, "-": -1, "~": 0}[sign])
    return {"seq_item_id": np.array(seq), "seq_polarity": np.array(pol),
            "valid_index": valid_index, "valid_item_id": valid, "test_item_id": test}


def check(got, **expected):
    for key, value in expected.items():
        want = ids(value) if isinstance(value, str) else value
        assert np.asarray(got[key]).tolist() == want, key


# --------------------------------------------------------------- hand-worked users

TIMELINE = "+a -x +b -y -z +c -u +d:valid -w -t +e:test"


@pytest.mark.parametrize("rule", ["previous", "window"])
def test_hand_worked_user(rule):
    """Nearest skips: a none, b x, c z, d u (the event before each; no neutrals, so both
    rules agree). Valid candidates: the skips between c and d; test: after d."""
    w = user_windows(example(TIMELINE), max_len=5, negative_rule=rule)
    check(w["train"], inputs=". . . a b", input_negatives=". . . . x",
          targets=". . . b c", target_negatives=". . . x z", mask=[0, 0, 0, 1, 1],
          exclude="a b c")
    check(w["valid"], inputs=". . a b c", input_negatives=". . . x z", target=item("d"),
          candidates="u", exclude="a b c")
    check(w["test"], inputs=". a b c d", input_negatives=". . x z u", target=item("e"),
          candidates="w t", exclude="a b c d")


def test_truncation_keeps_the_most_recent():
    w = user_windows(example(TIMELINE), max_len=2, max_candidates=1)
    check(w["train"], inputs="a b", input_negatives=". x", targets="b c",
          target_negatives="x z", exclude="a b c")
    # the model reads the last two inputs; full ranking still excludes every earlier
    # positive of the window (a is older than both kept inputs)
    check(w["valid"], inputs="b c", input_negatives="x z", candidates="u", exclude="a b c")
    check(w["test"], inputs="c d", input_negatives="z u", candidates="t", exclude="a b c d")
    long = user_windows(example("+a +b +c +d +e -x +f:valid +g:test"), max_len=3)
    check(long["train"], inputs="b c d", targets="c d e", mask=[1, 1, 1],
          target_negatives=". . .", exclude="a b c d e")
    check(long["valid"], inputs="c d e", input_negatives=". . .", candidates="x")


def test_neutral_event_separates_previous_from_window():
    """'previous' needs the skip right before the positive; 'window' takes the latest
    skip since the previous positive across the neutral events."""
    ex = example("+a -x ~n +b -y ~m +c:valid -z +d:test")
    prev, win = (user_windows(ex, 4, rule) for rule in ("previous", "window"))
    check(prev["train"], inputs=". . . a", targets=". . . b", target_negatives=". . . .")
    check(win["train"], inputs=". . . a", targets=". . . b", target_negatives=". . . x")
    check(prev["valid"], input_negatives=". . . .", candidates="y")  # not the neutral m
    check(win["valid"], input_negatives=". . . x", candidates="y")
    check(prev["test"], input_negatives=". . . .", candidates="z")
    check(win["test"], input_negatives=". . x y", candidates="z")


def test_repeated_target_is_ranked_and_its_own_skips_are_no_candidates():
    """The valid target a repeats an earlier positive: a stays out of `exclude` (it
    must be ranked). The test target d was skipped before: that skip is no candidate."""
    w = user_windows(example("+a -x +b -y +a:valid -d -w +d:test"), max_len=4)
    check(w["valid"], inputs=". . a b", target=item("a"), candidates="y", exclude="b")
    check(w["test"], inputs=". a b a", target=item("d"), candidates="w", exclude="a b")
    assert w["test"]["candidate_positions"].tolist() == [6]


def test_users_with_few_training_positives():
    one = user_windows(example("-q +a -x +b:valid -y +c:test"), max_len=3)
    check(one["train"], inputs=". . .", targets=". . .", mask=[0, 0, 0], exclude="a")
    check(one["valid"], inputs=". . a", candidates="x")
    check(one["test"], inputs=". a b", input_negatives=". q x", candidates="y")
    none = user_windows(example("-x -y +b:valid -z +c:test"), max_len=3)
    check(none["train"], inputs=". . .", targets=". . .", mask=[0, 0, 0], exclude="")
    check(none["valid"], inputs=". . .", candidates="x y", exclude="")
    check(none["test"], inputs=". . b", input_negatives=". . y", candidates="z")


def test_invalid_arguments():
    ex = example(TIMELINE)
    with pytest.raises(ValueError, match="`negative_rule` must be one of"):
        user_windows(ex, 3, negative_rule="latest")
    with pytest.raises(ValueError, match="`max_len` must be >= 1"):
        user_windows(ex, 0)
    with pytest.raises(ValueError, match="`valid_index` 2 must point at the validation"):
        user_windows({**ex, "valid_index": 2}, 3)
    vocab = Vocabulary("item_id", np.arange(1, 30), 2)
    with pytest.raises(ValueError, match="`split` must be one of"):
        SequentialWindows(vocab, "eval", 3)
    with pytest.raises(ValueError, match="`max_candidates` must be >= 1"):
        SequentialWindows(vocab, "test", 3, max_candidates=0)


# -------------------------------------------------------------- leakage properties


@st.composite
def users(draw):
    """A sample as the Beam job writes it: unique item per position (the item names the
    position), a positive at `valid_index`, no positive after it."""
    before = draw(st.lists(st.sampled_from([1, 1, -1, -1, 0]), max_size=25))
    after = draw(st.lists(st.sampled_from([-1, 0]), max_size=6))
    pol = np.array(before + [1] + after, np.int64)
    k = len(before)
    items = np.arange(100, 100 + len(pol))
    return {"seq_item_id": items, "seq_polarity": pol, "valid_index": k,
            "valid_item_id": items[k], "test_item_id": 99}


@settings(max_examples=150, deadline=None)
@given(ex=users(), max_len=st.integers(1, 8), rule=st.sampled_from(["previous", "window"]))
def test_no_leakage(ex, max_len, rule):
    w = user_windows(ex, max_len, rule, max_candidates=None)
    k, pol = ex["valid_index"], ex["seq_polarity"]

    def positions(values):
        v = np.asarray(values)
        return (v[v != PAD_ID] - 100).tolist()

    train = w["train"]
    for key in ("inputs", "input_negatives", "targets", "target_negatives", "exclude"):
        assert all(p < k for p in positions(train[key])), key
    assert all(p < k for key in ("inputs", "input_negatives") for p in positions(w["valid"][key]))
    for split in ("valid", "test"):  # the test target (99) is in no input
        assert 99 not in w[split]["inputs"].tolist() + w[split]["input_negatives"].tolist()
    valid_c, test_c = w["valid"]["candidate_positions"], w["test"]["candidate_positions"]
    assert not set(valid_c.tolist()) & set(test_c.tolist())
    assert all(c < k and pol[c] == -1 for c in valid_c)
    assert all(c > k and pol[c] == -1 for c in test_c)
    # every skip of the window is a candidate of at most one split, and every skip
    # after the last training positive is a candidate of exactly one
    last_train = max([j for j in range(k) if pol[j] == 1], default=-1)
    skips = [j for j in range(last_train + 1, len(pol)) if pol[j] == -1]
    assert sorted(valid_c.tolist() + test_c.tolist()) == skips
    # input negatives sit before their positives, targets are positives
    for p in positions(train["targets"]) + positions(w["test"]["inputs"]):
        assert pol[p] == 1


# ------------------------------------------------------------------ tf.data input

SAMPLES = SamplesConfig(task="sequential", max_sequence=14)
ENCODER = None


def encode(rows):
    """tf.Examples of example dicts, through the Beam job's Arrow -> tf.Example path."""
    global ENCODER
    ENCODER = ENCODER or RecordBatchToExamplesEncoder()
    schema = arrow_schema(SAMPLES)
    cols = [pa.array([np.atleast_1d(r[f.name]).tolist() for r in rows], f.type)
            for f in schema]
    return ENCODER.encode(pa.RecordBatch.from_arrays(cols, schema=schema))


def write_sequences(root, rows):
    (root / "sequences").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(root / "sequences" / "part-0.tfrecord.gz"), "GZIP") as w:
        for s in encode(rows):
            w.write(s)
    return str(root)


def random_rows(rng, n_users, n_items, neutral_users=0):
    """`n_users` samples from `build_sequential_sample` over random timelines (items
    repeat; the window cuts long users), then `neutral_users` with neutral events in
    `seq_*`, which the Beam job drops but the windows accept."""
    rows = []
    while len(rows) < n_users:
        n = int(rng.integers(4, 30))
        pol = rng.choice([1, -1, -1, 0], n)
        ev = EventChunk(user_id=np.full(n, len(rows)), item_id=rng.integers(1, n_items + 1, n),
                        timestamp=np.sort(rng.integers(0, 50, n)), value=np.zeros(n),
                        file_index=np.zeros(n), line=np.arange(n), label=(pol == 1),
                        polarity=pol)
        batch = build_sequential_sample(ev, SAMPLES)
        if batch is not None:
            rows.append({k: v[0] for k, v in batch.to_pydict().items()})
    for _ in range(neutral_users):
        before = rng.choice([1, -1, 0], int(rng.integers(6, 16))).tolist()
        pol = before + [1] + rng.choice([-1, 0], int(rng.integers(0, 4))).tolist()
        items = rng.integers(1, n_items + 1, len(pol)).tolist()
        rows.append({"user_id": len(rows), "seq_item_id": items, "seq_polarity": pol,
                     "seq_order": list(range(1, len(pol) + 1)),
                     "seq_timestamp": list(range(len(pol))), "valid_index": len(before),
                     "valid_item_id": items[len(before)],
                     "test_item_id": int(rng.integers(1, n_items + 1))})
    return rows


@pytest.fixture(scope="module")
def random_users(tmp_path_factory):
    rng = np.random.default_rng(7)
    rows = random_rows(rng, 42, 25, neutral_users=7)
    rows.append({"user_id": 50, "seq_item_id": [3, 24, 5, 7], "seq_polarity": [1, -1, -1, -1],
                 "seq_order": [4, 5, 6, 7], "seq_timestamp": [4, 5, 6, 7], "valid_index": 0,
                 "valid_item_id": 3, "test_item_id": 3})  # no training event
    # items 24, 25 out of vocabulary (hashed rows); raw id order != row order
    vocab = Vocabulary("item_id", rng.permutation(np.arange(1, 24)), oov_buckets=3)
    return write_sequences(tmp_path_factory.mktemp("seq"), rows), rows, vocab


def test_random_users_cover_the_cases(random_users):
    """The users of the tf.data comparison exercise every branch."""
    _, rows, vocab = random_users
    refs = {rule: [user_windows(r, 4, rule, max_candidates=3) for r in rows]
            for rule in ("previous", "window")}
    differ = [any(not np.array_equal(a[s][k], b[s][k]) for s in a for k in a[s])
              for a, b in zip(refs["previous"], refs["window"], strict=True)]
    assert 0 < sum(differ) < len(rows)
    assert any(max(np.ravel(r["seq_item_id"])) > vocab.ids.max() for r in rows)  # OOV
    assert any(w["train"]["mask"].sum() == 0 for w in refs["previous"])  # n < 2
    assert any(w["train"]["mask"].all() for w in refs["previous"])  # truncated to L
    assert any(len(w["test"]["candidates"]) == 3 for w in refs["previous"])
    assert any(np.ravel(r["valid_index"])[0] == 0 for r in rows)


def collect(ds):
    out = {}
    for batch in ds:
        for key, value in batch.items():
            out.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(v) for key, v in out.items()}


@pytest.mark.parametrize("rule", ["previous", "window"])
def test_tf_windows_equal_the_numpy_reference(random_users, rule):
    samples_dir, rows, vocab = random_users
    L, C = 4, 3  # noqa: N806 - short enough to truncate
    refs = [user_windows(r, L, rule, max_candidates=C) for r in rows]
    rows_of = vocab.lookup_numpy
    for split in ("train", "valid", "test"):
        # `exclude` holds every input positive of the window, beyond L too
        got = collect(make_sequential_dataset(samples_dir, split, 16, L, rule, C,
                                              item_vocab=vocab, seed=1, max_exclude=40))
        assert len(next(iter(got.values()))) == len(rows)
        keys = (["inputs", "input_negatives", "targets", "target_negatives"]
                if split == "train" else ["inputs", "input_negatives"])
        for key in keys:
            want = np.stack([rows_of(w[split][key]) for w in refs])
            np.testing.assert_array_equal(got[key], want, err_msg=f"{split}/{key}")
        if split == "train":
            np.testing.assert_array_equal(got["mask"], np.stack([w["train"]["mask"] for w in refs]))
            continue
        np.testing.assert_array_equal(got["raw_user_id"], [np.ravel(r["user_id"])[0] for r in rows])
        np.testing.assert_array_equal(got["target"], [rows_of(w[split]["target"]) for w in refs])
        cands = np.stack([rows_of(np.pad(w[split]["candidates"],
                                         (C - len(w[split]["candidates"]), 0),
                                         constant_values=PAD_ID)) for w in refs])
        np.testing.assert_array_equal(got["candidates"], cands, err_msg=split)
        np.testing.assert_array_equal(got["candidate_mask"], cands != 0)
        for g, w in zip(got["exclude"], refs, strict=True):
            assert set(g[g != 0].tolist()) == set(rows_of(w[split]["exclude"]).tolist())
        # the data truncates: some users' excluded items are not all among their inputs
        assert any(len(set(rows_of(w[split]["exclude"]).tolist()) - set(i.tolist()) - {0})
                   for w, i in zip(refs, got["inputs"], strict=True))


def test_training_batches_have_fixed_shapes(random_users):
    samples_dir, rows, vocab = random_users
    ds = make_sequential_dataset(samples_dir, "train", 16, 5, training=True, seed=0,
                                 item_vocab=vocab)
    batches = list(ds)
    assert len(batches) == len(rows) // 16
    for b in batches:
        assert all(v.shape == (16, 5) for v in b.values())
    ev = make_sequential_dataset(samples_dir, "test", 16, 5, max_candidates=7, item_vocab=vocab)
    spec = ev.element_spec
    assert spec["candidates"].shape.as_list() == [None, 7]
    assert spec["inputs"].shape.as_list() == [None, 5] and spec["target"].shape.as_list() == [None]


def test_random_negatives_avoid_positives_and_change_between_epochs(tmp_path):
    """Catalogue of 6 items, each user's training positives cover 4 of them: a draw from
    the whole catalogue would collide 2 times in 3; exact draws never do."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(24):
        pos = rng.permutation(np.arange(1, 7))[:4].tolist()
        seq = pos + pos[:2] + [pos[0]]  # 7 training positives, then the valid positive
        rows.append({"user_id": u, "seq_item_id": seq, "seq_polarity": [1] * len(seq),
                     "seq_order": list(range(1, 8)), "seq_timestamp": list(range(7)),
                     "valid_index": 6, "valid_item_id": pos[0], "test_item_id": 6})
    vocab = Vocabulary("item_id", np.arange(1, 7), oov_buckets=2)  # rows 3 .. 8
    samples_dir = write_sequences(tmp_path, rows)
    ds = make_sequential_dataset(samples_dir, "train", 8, 6, item_vocab=vocab, seed=5)
    epochs = [collect(ds) for _ in range(2)]
    counts = np.zeros(9, np.int64)
    for got in epochs:
        for r, neg, mask in zip(rows, got["random_negatives"], got["mask"], strict=True):
            positives = set(vocab.lookup_numpy(np.array(r["seq_item_id"][:6])).tolist())
            assert (neg[mask == 0] == 0).all()
            drawn = neg[mask == 1]
            assert len(drawn) == 5 and not set(drawn.tolist()) & positives
            assert set(drawn.tolist()) <= set(range(3, 9))
            np.add.at(counts, drawn, 1)
    assert not np.array_equal(epochs[0]["random_negatives"], epochs[1]["random_negatives"])
    again = collect(make_sequential_dataset(samples_dir, "train", 8, 6, item_vocab=vocab, seed=5))
    np.testing.assert_array_equal(again["random_negatives"], epochs[0]["random_negatives"])
    # every catalogue row is drawn (users exclude different rows), about equally often
    assert (counts[3:] > 0).all() and counts.sum() == 2 * 24 * 5


def test_random_negatives_are_uniform_over_the_free_rows():
    vocab = Vocabulary("item_id", np.arange(10, 20), oov_buckets=4)  # rows 5 .. 14
    w = SequentialWindows(vocab, "train", 4)
    positives = tf.ragged.constant([[6, 9, 9, 14, 2, 0], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
                                    []], dtype=tf.int64)  # 2, 0: OOV / pad, never drawn
    mask = tf.ones([3, 20000], tf.bool)
    got = w.random_negatives(positives, mask, tf.constant([1, 2], tf.int64)).numpy()
    free = sorted(set(range(5, 15)) - {6, 9, 14})
    values, counts = np.unique(got[0], return_counts=True)
    assert values.tolist() == free
    assert np.abs(counts / 20000 - 1 / 7).max() < 0.01  # 4 sigma is about 0.01
    assert (got[1] == 0).all()  # nothing left to draw
    values, counts = np.unique(got[2], return_counts=True)
    assert values.tolist() == list(range(5, 15)) and np.abs(counts / 20000 - 0.1).max() < 0.01


# ---------------------------------------------------------------- length grouping

def test_resolve_buckets():
    assert resolve_buckets(200, None) == [25, 50, 100, 200]
    assert resolve_buckets(5, None) == [1, 2, 3, 5]  # ceil(5/8), ceil(5/4), ceil(5/2)
    assert resolve_buckets(200, []) == []
    assert resolve_buckets(200, [30, 60]) == [30, 60, 200]
    assert resolve_buckets(200, [30, 200]) == [30, 200]
    for bad in ([60, 30], [30, 30], [0, 10], [300]):
        with pytest.raises(ValueError, match="strictly ascending"):
            resolve_buckets(200, bad)


def test_config_refuses_bad_length_buckets():
    from tfnegseq.kinds.sequential.config import SequentialModelConfig

    with pytest.raises(ValueError, match="length_buckets"):
        SequentialModelConfig(max_length=50, length_buckets=[40, 20])
    assert SequentialModelConfig(max_length=50, length_buckets=[20]).length_buckets == [20]


def row_set(got):
    """The multiset of users' (inputs, input_negatives, targets, target_negatives,
    mask) rows, each left-padded back to `width` columns."""
    keys = ("inputs", "input_negatives", "targets", "target_negatives", "mask")
    return sorted(tuple(tuple(np.asarray(got[k][i]).tolist()) for k in keys)
                  for i in range(len(got["mask"])))


def grouping_users(tmp_path, users, seed):
    """`users` random users over 30 items written as sequential samples with a manifest;
    (samples_dir, item vocabulary)."""
    rows = random_rows(np.random.default_rng(seed), users, 30)
    samples_dir = write_sequences(tmp_path, rows)
    (tmp_path / "manifest.json").write_text(f'{{"samples": {{"sequences": {users}}}}}')
    return samples_dir, Vocabulary("item_id", np.arange(1, 31), oov_buckets=1)


def test_length_grouping_keeps_every_user_and_only_cuts_padding(tmp_path):
    """64 users, 4 chunks of 16 at batch 4, so no user is dropped: the grouped epoch holds exactly the ungrouped epoch's rows; each batch
    is cut to the smallest bucket that holds its longest user."""
    samples_dir, vocab = grouping_users(tmp_path, 64, seed=11)
    L, B, buckets = 12, 4, [3, 6]  # noqa: N806 - resolved: [3, 6, 12]
    plain = collect(make_sequential_dataset(samples_dir, "train", B, L, item_vocab=vocab,
                                            training=True, seed=0))
    ds = make_sequential_dataset(samples_dir, "train", B, L, item_vocab=vocab, training=True,
                                 seed=0, length_buckets=buckets)
    assert ds.cardinality().numpy() == 64 // B
    widths, padded = [], {}
    for batch in ds:
        width = batch["mask"].shape[1]
        longest = int(batch["mask"].numpy().sum(axis=1).max())
        assert width == min(b for b in (3, 6, 12) if b >= longest), (width, longest)
        assert all(v.shape == ((B,) if k in SCALE_KEYS else (B, width))
                   for k, v in batch.items())
        widths.append(width)
        for k, v in batch.items():
            if k not in SCALE_KEYS:
                padded.setdefault(k, []).append(np.pad(v.numpy(), [(0, 0), (L - width, 0)]))
    grouped = {k: np.concatenate(v) for k, v in padded.items()}
    assert len(widths) == 64 // B and len(set(widths)) > 1  # the data spans buckets
    assert row_set(grouped) == row_set(plain)
    # the random negatives sit on the target slots
    assert ((grouped["random_negatives"] != 0) == (grouped["mask"] == 1)).all()


def test_length_grouping_weighs_every_pair_of_a_chunk_the_same():
    """One chunk of 4 batches of 2 users with 1 .. 8 targets: sorted, the batches hold
    3, 7, 11 and 15 pairs. Averaged over its own pairs, a pair of the first batch would
    weigh 5x a pair of the last. With the scales, a pair's weight (its batch's scale
    over its batch's pair count) is 1 / 9 for every pair, 9 the chunk's mean count per
    batch; the feedback scale counts only the pairs with a passive negative."""
    L, B = 8, 2  # noqa: N806
    lengths = [5, 2, 8, 1, 7, 3, 6, 4]  # shuffled stream order
    mask = np.array([[0.0] * (L - k) + [1.0] * k for k in lengths], np.float32)
    # a passive negative on every other target slot, from the right
    negatives = np.where((np.arange(L)[None, :] % 2 == 1) & (mask > 0), 9, 0).astype(np.int64)
    chunk = {"mask": mask, "target_negatives": negatives,
             "inputs": np.arange(8)[:, None] * np.ones((1, L), np.int64)}
    got = [{k: v.numpy() for k, v in b.items()}
           for b in group_by_length(tf.data.Dataset.from_tensors(chunk), B, [2, 4, 8], L,
                                    seed=0)]
    assert len(got) == 4
    counts = sorted(b["mask"].sum() for b in got)
    assert counts == [3, 7, 11, 15]
    for b in got:
        for key in SCALE_KEYS:
            assert b[key].shape == (B,) and np.all(b[key] == b[key][0]), key
        pairs = b["mask"].sum()
        np.testing.assert_allclose(b[LOSS_SCALE][0] / pairs, 1 / 9, rtol=1e-6)
        feedback = (b["mask"] * (b["target_negatives"] != 0)).sum()
        feedback_mean = (mask * (negatives != 0)).sum() / 4
        np.testing.assert_allclose(b[FEEDBACK_SCALE][0], feedback / feedback_mean, rtol=1e-6)


def test_length_grouping_scales_only_when_grouped(tmp_path):
    """The scales come with grouped training batches only; an ungrouped batch keeps the
    model's plain mean over its own pairs."""
    samples_dir, vocab = grouping_users(tmp_path, 64, seed=11)
    grouped = make_sequential_dataset(samples_dir, "train", 4, 12, item_vocab=vocab,
                                      training=True, seed=0, length_buckets=[3, 6])
    plain = make_sequential_dataset(samples_dir, "train", 4, 12, item_vocab=vocab,
                                    training=True, seed=0)
    assert set(SCALE_KEYS) <= set(grouped.element_spec)
    assert not set(SCALE_KEYS) & set(plain.element_spec)
    # over the epoch the scales of each chunk's four batches sum to 4
    total = sum(float(b[LOSS_SCALE][0]) for b in grouped)
    np.testing.assert_allclose(total, 16, rtol=1e-5)


def test_exclude_width_is_the_samples_window(tmp_path):
    """`exclude` is as wide as the samples' window (`max_sequence` in manifest.json), so
    a window's every input positive fits whatever L the model reads; without the
    setting in the manifest it falls back to L."""
    samples_dir, vocab = grouping_users(tmp_path, 8, seed=3)
    ds = make_sequential_dataset(samples_dir, "test", 4, 5, item_vocab=vocab)
    assert ds.element_spec["exclude"].shape.as_list() == [None, 5]
    (tmp_path / "manifest.json").write_text(
        '{"samples": {"sequences": 8}, "config": {"samples": {"max_sequence": 21}}}')
    ds = make_sequential_dataset(samples_dir, "test", 4, 5, item_vocab=vocab)
    assert ds.element_spec["exclude"].shape.as_list() == [None, 21]
    assert ds.element_spec["inputs"].shape.as_list() == [None, 5]


def test_length_grouping_cuts_a_partial_chunk_before_sorting():
    """A chunk of 6 users at batch 4 keeps the first 4 of the (shuffled) stream, not
    the 4 shortest: the users an epoch drops are random ones."""
    L = 8  # noqa: N806
    lengths = [6, 5, 4, 3, 2, 1]
    mask = np.array([[0.0] * (L - n) + [1.0] * n for n in lengths], np.float32)
    chunk = {"mask": mask, "inputs": np.arange(6)[:, None] * np.ones((1, L), np.int64)}
    ds = tf.data.Dataset.from_tensors(chunk)
    got = [{k: v.numpy() for k, v in b.items()}
           for b in group_by_length(ds, 4, [2, 4, 8], L, seed=0)]
    assert len(got) == 1
    assert sorted(got[0]["mask"].sum(axis=1).tolist()) == [3, 4, 5, 6]
    assert got[0]["mask"].shape == (4, 8)
    # sorted by length within the batch, each row's user intact
    assert got[0]["inputs"][:, 0].tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluation_grouping_keeps_every_user_and_only_cuts_padding(tmp_path, split):
    """Evaluation splits with `length_buckets`: every user exactly once (37 users at
    batch 4: the last batch partial), each user's row that of the plain input once its
    cut columns are padded back, batches cut to the smallest bucket holding their
    longest user, and two passes in the same order."""
    samples_dir, vocab = grouping_users(tmp_path, 37, seed=12)
    L, B, buckets = 12, 4, [3, 6]  # noqa: N806 - resolved: [3, 6, 12]
    plain = collect(make_sequential_dataset(samples_dir, split, B, L, item_vocab=vocab))
    ds = make_sequential_dataset(samples_dir, split, B, L, item_vocab=vocab,
                                 length_buckets=buckets)
    assert ds.cardinality().numpy() == 10
    cut_keys = ("inputs", "input_negatives")  # `exclude` keeps its width E
    widths, padded = [], {}
    for batch in ds:
        width = batch["inputs"].shape[1]
        longest = int((batch["inputs"].numpy() != 0).sum(axis=1).max())
        assert width == min(b for b in (3, 6, 12) if b >= longest), (width, longest)
        widths.append(width)
        for k, v in batch.items():
            v = v.numpy()
            if k in cut_keys:
                assert v.shape[1] == width, k
                v = np.pad(v, [(0, 0), (L - width, 0)])
            padded.setdefault(k, []).append(v)
    grouped = {k: np.concatenate(v) for k, v in padded.items()}
    assert len(set(widths)) > 1  # the data spans buckets
    assert sorted(grouped["raw_user_id"].tolist()) == sorted(plain["raw_user_id"].tolist())
    where = {u: i for i, u in enumerate(plain["raw_user_id"].tolist())}
    order = [where[u] for u in grouped["raw_user_id"].tolist()]
    for k in plain:
        np.testing.assert_array_equal(grouped[k], plain[k][order], err_msg=k)
    again = np.concatenate([b["raw_user_id"].numpy() for b in ds])
    np.testing.assert_array_equal(again, grouped["raw_user_id"])
