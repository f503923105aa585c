"""tf.data input: left padding and the feature processor against per-example references."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers_data import make_cfg, write_log
from tfnegseq import schema
from tfnegseq.data import job
from tfnegseq.data.input import FeatureProcessor, left_pad


def left_pad_reference(rows, max_len, pad):
    """Most recent `max_len` values of each row, padded on the left."""
    out = []
    for r in rows:
        kept = list(r)[-max_len:] if max_len else []
        out.append([pad] * (max_len - len(kept)) + kept)
    return out


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(-5, 1000), max_size=9), min_size=1, max_size=6),
    max_len=st.integers(1, 7),
    pad=st.sampled_from([0, -1]),
)
def test_left_pad_keeps_the_most_recent_values_right_aligned(rows, max_len, pad):
    rt = tf.ragged.constant(rows, dtype=tf.int64, ragged_rank=1) if any(rows) else (
        tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int64), [0] * len(rows)))
    got = left_pad(rt, max_len, pad)
    assert got.shape == (len(rows), max_len) and got.dtype == tf.int64
    assert got.numpy().tolist() == left_pad_reference(rows, max_len, pad)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    write_log(root / "log", np.random.default_rng(3), users=10, per_user=30)
    cfg = make_cfg(root / "log", root / "out")
    job.run(cfg)
    return str(root / "out"), cfg


@pytest.mark.parametrize("truncate_to", [None, 3])
def test_feature_processor_matches_a_per_example_reference(samples, truncate_to):
    """Every feature of every record: lists truncated to the most recent, left-padded,
    ids looked up (padding -> row 0), scalars looked up, label as float."""
    data_dir, cfg = samples
    lists = [f.name for f in schema.features(cfg.samples) if f.is_list]
    max_lengths = {n: truncate_to for n in lists} if truncate_to else None
    processor = FeatureProcessor.from_data_dir(data_dir, cfg, max_lengths=max_lengths)
    files = sorted(glob.glob(os.path.join(data_dir, "train", "*.tfrecord.gz")))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    assert serialized
    features, label = processor(tf.constant(serialized))
    for i, raw in enumerate(serialized):
        ex = tf.train.Example.FromString(raw).features.feature
        for f in schema.features(cfg.samples):
            values = list(ex[f.name].int64_list.value) or list(ex[f.name].float_list.value)
            if f.name == "label":
                assert label[i].numpy() == pytest.approx(float(values[0]))
                continue
            if f.is_list:
                pad = schema.PAD_ID if f.vocab else 0
                values = left_pad_reference([values], processor.max_lengths[f.name], pad)[0]
            if f.vocab:
                values = processor.vocabularies[f.vocab].lookup_numpy(np.asarray(values))
            want = np.asarray(values, np.int64).reshape(features[f.name][i].shape)
            np.testing.assert_array_equal(features[f.name][i].numpy(), want, err_msg=f.name)


def test_keep_raw_ids_yields_the_raw_user_id_for_users_sharing_an_oov_row(samples):
    """GAUC groups by user: two raw users hashed into one OOV row must stay apart.
    A user vocabulary that keeps no real user and has 2 OOV buckets merges the 10 users
    into 2 rows;
    `raw_user_id` keeps them distinct, and without the flag the batches are unchanged."""
    from tfnegseq.config import VocabConfig
    from tfnegseq.data.input import make_dataset
    from tfnegseq.data.vocab import Vocabulary, load_vocabularies

    data_dir, cfg = samples
    vocabs = load_vocabularies(data_dir, schema.vocab_names(cfg.samples), cfg.vocab)
    vocabs["user_id"] = Vocabulary.from_counts(
        "user_id", np.array([10**12]), np.array([1]), VocabConfig(oov_buckets=2))
    processor = FeatureProcessor(cfg, vocabs)
    files = sorted(glob.glob(os.path.join(data_dir, "train", "*.tfrecord.gz")))
    want = []  # (raw user, timestamp, order) of every example
    for r in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.train.Example.FromString(r.numpy()).features.feature
        want.append(tuple(ex[k].int64_list.value[0] for k in ("user_id", "timestamp", "order")))

    plain = list(make_dataset(data_dir, "train", cfg, batch_size=16, processor=processor))
    kept = list(make_dataset(data_dir, "train", cfg, batch_size=16, processor=processor,
                             keep_raw_ids=True))
    assert len(plain) == len(kept)
    for (fa, la), (fb, lb) in zip(plain, kept, strict=True):
        assert "raw_user_id" not in fa and set(fb) == set(fa) | {"raw_user_id"}
        for k in fa:
            np.testing.assert_array_equal(fa[k].numpy(), fb[k].numpy(), err_msg=k)
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
        assert fb["raw_user_id"].dtype == tf.int64 and fb["raw_user_id"].shape == fb["user_id"].shape
    raw = np.concatenate([f["raw_user_id"].numpy() for f, _ in kept])
    rows = np.concatenate([f["user_id"].numpy() for f, _ in kept])
    got = zip(raw.tolist(), *(np.concatenate([f[k].numpy() for f, _ in kept]).tolist()
                              for k in ("timestamp", "order")), strict=True)
    assert sorted(got) == sorted(want)  # each example keeps its own raw user id
    np.testing.assert_array_equal(rows, 1 + raw % 2)
    assert len(set(raw.tolist())) > len(set(rows.tolist())) == 2
