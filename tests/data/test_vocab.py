"""Vocabularies: the raw id -> row mapping against an independent reference.

Reference, written from Keras 3.15's `IntegerLookup` / `IndexLookup` (documented in
its `oov_method` argument and implemented in `index_lookup.py`, `_lookup_dense`): with
`mask_token` set and `output_mode="int"`, the mask token is row 0, the OOV rows follow
(`num_oov_indices` of them) and the vocabulary after them in the given order. With
`num_oov_indices > 1` and integer keys, the default `oov_method="floormod"` puts an
OOV id in bucket `tf.math.floormod(id, num_oov_indices)` (FarmHash64 is only used for
string keys or `oov_method="farmhash"`, which `Vocabulary` does not set); with one
OOV index every OOV id gets that one row.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfnegseq.config import VocabConfig
from tfnegseq.data.vocab import Vocabulary
from tfnegseq.schema import PAD_ID


def reference_rows(raw, kept, oov_buckets):
    """Row of each raw id: PAD_ID -> 0, kept[p] -> 1 + oov_buckets + p, any other id
    -> 1 + (id mod oov_buckets), Python's `%` being a floor modulo like TF's."""
    position = {int(v): p for p, v in enumerate(kept)}
    out = []
    for r in raw:
        r = int(r)
        if r == PAD_ID:
            out.append(0)
        elif r in position:
            out.append(1 + oov_buckets + position[r])
        else:
            out.append(1 + r % oov_buckets)
    return out


def test_hand_worked_example():
    """ids 30, 10, 20 (counts 5, 9, 9: 10 and 20 tie, smaller id first), 4 OOV buckets."""
    vocab = Vocabulary.from_counts("item_id", np.array([30, 10, 20]), np.array([5, 9, 9]),
                                   VocabConfig(oov_buckets=4))
    assert vocab.ids.tolist() == [10, 20, 30] and vocab.size == 8
    raw = [-1, 10, 20, 30, 7, 8, -2, -5, 0]
    # 7 % 4 = 3 -> row 4; 8 % 4 = 0 -> row 1; -2 % 4 = 2 -> row 3; -5 % 4 = 3 -> row 4
    want = [0, 5, 6, 7, 4, 1, 3, 4, 1]
    got = vocab.lookup_layer()(tf.constant(raw, tf.int64)).numpy().tolist()
    assert got == want
    assert vocab.lookup_numpy(np.array(raw)).tolist() == want


@pytest.mark.parametrize("oov_buckets", [1, 2, 7, 16])
def test_lookup_layer_matches_the_reference_on_many_ids(oov_buckets):
    rng = np.random.default_rng(oov_buckets)
    ids = rng.choice(np.arange(0, 5000), size=300, replace=False)
    counts = rng.integers(1, 20, size=300)
    vocab = Vocabulary.from_counts("item_id", ids, counts,
                                   VocabConfig(min_count=3, max_size=200, oov_buckets=oov_buckets))
    raw = np.concatenate([
        np.arange(-40, 6000),  # the mask id, negative ids, kept, dropped and unseen ids
        rng.integers(0, 2**62, size=500),
        [2**63 - 1, -(2**63), -(2**63) + 1, 2**40, -(2**40)],
    ]).astype(np.int64)
    want = reference_rows(raw, vocab.ids, oov_buckets)
    got = vocab.lookup_layer()(tf.constant(raw)).numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(vocab.lookup_numpy(raw), want)
    # OOV ids land in every bucket and only in the OOV rows
    oov = ~np.isin(raw, vocab.ids) & (raw != PAD_ID)
    assert set(got[oov].tolist()) == set(range(1, oov_buckets + 1))


def test_lookup_keeps_the_input_shape():
    vocab = Vocabulary.from_counts("user_id", np.array([3, 4]), np.array([1, 1]),
                                   VocabConfig(oov_buckets=3))
    raw = np.array([[3, -1, 9], [4, -7, 2**50]])
    got = vocab.lookup_layer()(tf.constant(raw, tf.int64)).numpy()
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got, np.reshape(reference_rows(raw.ravel(), [3, 4], 3), (2, 3)))
    np.testing.assert_array_equal(vocab.lookup_numpy(raw), got)
