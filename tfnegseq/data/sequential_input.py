"""tf.data input of the sequential task: the windows of `tfnegseq.data.sequential`.

Reads the Beam job's one-example-per-user shards (`<samples_dir>/sequences/`), and
computes each split's windows for a batch of users at once with TensorFlow ops (no
`tf.py_function`), equal to `sequential.user_windows` (tested). Each element is a dict
of fixed-shape tensors (XLA compiles once), ids already looked up to embedding rows
with the item vocabulary's `IntegerLookup` (`tfnegseq.data.vocab`; padding is row 0),
as `tfnegseq.data.input` does for the CTR task:

    train   inputs, input_negatives, targets, target_negatives,
            random_negatives                                 [B, L] int64
            mask                                             [B, L] float32
            loss_scale, feedback_scale (grouped only)        [B]    float32
    valid / test
            inputs, input_negatives                          [B, L] int64
            exclude                                          [B, E] int64
            target                                           [B]    int64
            candidates                                       [B, C] int64
            candidate_mask                                   [B, C] float32
            raw_user_id                                      [B]    int64

Length grouping (train split, `length_buckets`): users are sorted by their number of
training targets within chunks of `BUCKET_CHUNK` batches of the shuffled stream, cut
into batches of `batch_size` in that order (a chunk's users beyond whole batches are
dropped before sorting: the epoch loses `N mod batch_size` random users, as without
grouping), and each batch keeps only its last `b` columns, `b` the
smallest bucket that holds its longest user (left padding: nothing but padding is
cut; the model's positions count from the right, so a user's inputs get the same
position embeddings at any `b`). The batch order is then shuffled. XLA compiles the
training step once per bucket.
Sorting makes batches of short users and batches of long users, and a loss averaged
over each batch's own pairs would then weigh a short user's pair up to 10x a long
user's (MovieLens-100K, shortest vs longest quarter of users), where random batches
weigh every pair about the same. So each grouped batch also carries `loss_scale` and
`feedback_scale` (`[B]`, one value per batch): its count of target pairs (`mask`) and
of pairs with a passive negative (`mask` and `target_negatives`) over its chunk's mean
count per batch. The model multiplies each batch-mean loss term by its scale, which
makes it the term's sum over the batch divided by the chunk's mean count: every pair of
the chunk weighs the same, as in an ungrouped epoch (about the same for DIN, which
scores only `din_train_positions` drawn pairs per user while the scale counts them all). On MovieLens-100K (median 36 targets, L = 200) this
cuts the padded slots about 2x (benchmarks/bench_sine.py, "length buckets").
Evaluation splits are grouped the same way (`length_buckets` given, not training):
users sorted by their number of inputs within chunks of `BUCKET_CHUNK` batches read in
order, every user kept (the last batch may be partial), no shuffle, and `inputs` and
`input_negatives` cut to the bucket. The order is deterministic, so two
passes over the split agree row by row; every metric is per user or pooled, so the
order changes none. It matters for DIN, whose full ranking costs O(L) attention
units per catalogue item.

`exclude` holds every input positive of the sample's window with the target's item
blanked (row 0): the user's earlier positives that full ranking leaves out, also those
older than the last L the model reads. Its width E is the samples' `max_sequence` (read
from `manifest.json`), so no window overflows it. `candidates` are left-padded, most
recent last.

Random negatives (SINE's L1 / SASRec's negative): one per target position, uniform
over the vocabulary's kept items (OOV buckets and padding are never drawn), and never
one of the user's training positives. They are drawn exactly from the catalogue minus
those positives (the r-th free row, found with one `searchsorted`), so no draw collides
and none needs redrawing: the residual collision rate is 0. A user whose positives
cover the whole catalogue gets row 0 (possible only on toy catalogues). Draws are
stateless, seeded per batch from `tf.data.Dataset.random(seed,
rerandomize_each_iteration=True)`: fresh every epoch (each new iterator) and every
batch of a repeated dataset, reproducible for a given `seed`.

Example:
    ds = make_sequential_dataset("build/samples/kuairand", "train", batch_size=128,
                                 max_len=50, training=True, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tfnegseq import schema
from tfnegseq.config import SamplesConfig, VocabConfig
from tfnegseq.data.input import RAW_USER_ID, left_pad, manifest_examples, record_batches
from tfnegseq.data.manifest import read_manifest
from tfnegseq.data.sequential import SPLITS, check_negative_rule, resolve_buckets
from tfnegseq.data.vocab import Vocabulary

AUTOTUNE = tf.data.AUTOTUNE
BUCKET_CHUNK = 4  # batches sorted by length together (length grouping)
# length grouping's per-batch loss scales ([B] float32, one value per batch): the
# batch's count of L1 / L2 pairs over its chunk's mean count per batch
LOSS_SCALE, FEEDBACK_SCALE = "loss_scale", "feedback_scale"
SCALE_KEYS = (LOSS_SCALE, FEEDBACK_SCALE)
SEQUENCES = "sequences"  # the Beam job's output folder (tfnegseq.data.beam.SEQUENCES)
# the example features the windows read (names from the schema's sequential features)
_KEYS = ("user_id", "seq_item_id", "seq_polarity", "valid_index", "valid_item_id",
         "test_item_id")


def _last_flagged(flags: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """[B, W] -> [B, W]: the position of the last flagged slot strictly before each slot,
    or -1 (vectorised: the exclusive count of flags indexes the flagged positions)."""
    before = tf.cumsum(tf.cast(flags, tf.int64), axis=1, exclusive=True)  # [B, W]
    flagged = tf.ragged.boolean_mask(positions, flags).to_tensor(default_value=-1)
    flagged = tf.pad(flagged, [[0, 0], [0, 1]], constant_values=-1)  # never empty
    last = tf.gather(flagged, tf.maximum(before - 1, 0), batch_dims=1)  # [B, W]
    return tf.where(before > 0, last, -1)


def group_by_length(ds: tf.data.Dataset, batch_size: int, buckets: Sequence[int],
                    max_len: int, seed: int | None = None) -> tf.data.Dataset:
    """Length grouping of a stream of train-window chunks (module docstring): `ds`
    yields dicts of `[n, max_len]` tensors, n <= BUCKET_CHUNK * batch_size users; the
    result yields `[batch_size, b]` batches, b in `buckets`."""
    bounds = tf.constant(list(buckets), tf.int32)

    def scale(pairs: tf.Tensor) -> tf.Tensor:
        """[n, L] 0/1 pairs of a sorted chunk -> [n]: each user's batch's pair count
        over the chunk's mean pair count per batch (1 where the chunk has none)."""
        per_batch = tf.reduce_sum(tf.reshape(pairs, [-1, batch_size * tf.shape(pairs)[1]]),
                                  axis=1)  # [n / batch_size]
        mean = tf.reduce_mean(per_batch)
        ratio = tf.where(mean > 0, per_batch / tf.maximum(mean, 1e-9), 1.0)
        return tf.repeat(ratio, batch_size)

    def sort_chunk(w: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # whole batches only, cut before sorting: the users a partial chunk drops are
        # random ones (the stream is shuffled), not its longest
        whole = tf.shape(w["mask"])[0] // batch_size * batch_size
        lengths = tf.reduce_sum(w["mask"][:whole], axis=1)
        order = tf.argsort(lengths, stable=True)
        out = {k: tf.gather(v[:whole], order) for k, v in w.items()}
        mask = tf.cast(out["mask"], tf.float32)
        out[LOSS_SCALE] = scale(mask)
        if "target_negatives" in out:
            out[FEEDBACK_SCALE] = scale(mask * tf.cast(out["target_negatives"] != 0, tf.float32))
        return out

    def cut(w: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        longest = tf.cast(tf.reduce_max(tf.reduce_sum(w["mask"], axis=1)), tf.int32)
        b = tf.gather(bounds, tf.minimum(tf.searchsorted(bounds, longest[None])[0],
                                         len(buckets) - 1))
        return {k: (v if k in SCALE_KEYS else v[:, max_len - b:]) for k, v in w.items()}

    ds = ds.map(sort_chunk, num_parallel_calls=AUTOTUNE).unbatch()
    ds = ds.batch(batch_size, drop_remainder=True).map(cut, num_parallel_calls=AUTOTUNE)
    return ds.shuffle(BUCKET_CHUNK * 4, seed=seed, reshuffle_each_iteration=True)


EVAL_CUT_KEYS = ("inputs", "input_negatives")  # [B, L], left-padded; `exclude` is [B, E]


def group_eval_by_length(ds: tf.data.Dataset, batch_size: int, buckets: Sequence[int],
                         max_len: int) -> tf.data.Dataset:
    """Length grouping of an evaluation split (module docstring): `ds` yields window
    chunks read in order; the result yields batches of at most `batch_size` users, each
    batch's `EVAL_CUT_KEYS` cut to the smallest bucket that holds its longest user."""
    bounds = tf.constant(list(buckets), tf.int32)

    def lengths(w: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.reduce_sum(tf.cast(w["inputs"] != 0, tf.int32), axis=1)

    def sort_chunk(w: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        order = tf.argsort(lengths(w), stable=True)
        return {k: tf.gather(v, order) for k, v in w.items()}

    def cut(w: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        longest = tf.reduce_max(lengths(w))
        b = tf.gather(bounds, tf.minimum(tf.searchsorted(bounds, longest[None])[0],
                                         len(buckets) - 1))
        return {k: (v[:, max_len - b:] if k in EVAL_CUT_KEYS else v) for k, v in w.items()}

    ds = ds.map(sort_chunk).unbatch().batch(batch_size)
    return ds.map(cut)


class SequentialWindows:
    """Parses serialized sequential examples into one split's window tensors.

    Args:
        item_vocab: Vocabulary. The item vocabulary (raw ids -> embedding rows).
        split: str. "train", "valid" or "test".
        max_len: int. L, the length of every input / target list.
        negative_rule: str. "previous" or "window" (`tfnegseq.data.sequential`).
            Defaults to "previous".
        max_candidates: int. C, candidates kept per user (most recent). Defaults to 100.
        max_exclude: int or None. E, the width of `exclude`: at least the samples'
            `max_sequence`, so that every input positive of a window fits (a longer
            list would keep its most recent E). None: `max_len`. Defaults to None.
    """

    def __init__(self, item_vocab: Vocabulary, split: str, max_len: int,
                 negative_rule: str = "previous", max_candidates: int = 100,
                 max_exclude: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
        if max_len < 1:
            raise ValueError(f"`max_len` must be >= 1. Received: max_len={max_len}")
        if max_candidates < 1:
            raise ValueError(
                f"`max_candidates` must be >= 1. Received: max_candidates={max_candidates}")
        check_negative_rule(negative_rule)
        self.item_vocab = item_vocab
        self.split = split
        self.max_len = max_len
        self.negative_rule = negative_rule
        self.max_candidates = max_candidates
        if max_exclude is not None and max_exclude < 1:
            raise ValueError(f"`max_exclude` must be >= 1. Received: max_exclude={max_exclude}")
        self.max_exclude = max_len if max_exclude is None else max_exclude
        self.lookup = item_vocab.lookup_layer()
        self.first_row = item_vocab.oov_buckets + 1  # the first kept item's row
        self.num_items = len(item_vocab.ids)
        spec = schema.parse_spec(SamplesConfig(task="sequential"))
        self.spec = {k: spec[k] for k in _KEYS}

    def _rows(self, raw: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.lookup(raw), tf.int64)

    def __call__(self, serialized: tf.Tensor, seed: tf.Tensor | None = None
                 ) -> dict[str, tf.Tensor]:
        """Window tensors of a batch of serialized examples (string [B]); `seed` is the
        int64 [2] seed of the train split's random negatives."""
        p = tf.io.parse_example(serialized, self.spec)
        raw = p["seq_item_id"].to_tensor(default_value=schema.PAD_ID)  # [B, W]
        rows = self._rows(raw)  # [B, W], padding -> 0
        pol = p["seq_polarity"].to_tensor(default_value=0)  # [B, W], padding neutral
        width = tf.shape(raw, out_type=tf.int64)[1]
        pos = tf.broadcast_to(tf.range(width)[None, :], tf.shape(raw, out_type=tf.int64))
        k = p["valid_index"][:, None]  # [B, 1]
        is_pos, is_neg = pol == 1, pol == -1

        if self.negative_rule == "previous":
            prev_neg = tf.pad(is_neg[:, :-1], [[0, 0], [1, 0]])  # [B, W]
            prev_rows = tf.pad(rows[:, :-1], [[0, 0], [1, 0]])
            neg_rows = tf.where(prev_neg, prev_rows, 0)
        else:  # "window": the latest negative after the latest earlier positive
            last_neg = _last_flagged(is_neg, pos)
            has = (last_neg >= 0) & (last_neg > _last_flagged(is_pos, pos))
            neg_rows = tf.where(has, tf.gather(rows, tf.maximum(last_neg, 0), batch_dims=1), 0)

        train_mask = is_pos & (pos < k)  # the training positives p_1 .. p_n
        if self.split == "train":
            return self._train(rows, neg_rows, train_mask, seed)
        if self.split == "valid":
            last_train = tf.reduce_max(tf.where(train_mask, pos, -1), axis=1, keepdims=True)
            in_mask = train_mask
            cand_mask = is_neg & (pos > last_train) & (pos < k)
            target_raw = p["valid_item_id"]
        else:
            in_mask = is_pos & (pos <= k)
            cand_mask = is_neg & (pos > k)
            target_raw = p["test_item_id"]
        cand_mask &= raw != target_raw[:, None]  # a skip of the target's item: dropped
        L, C = self.max_len, self.max_candidates  # noqa: N806
        inputs = left_pad(tf.ragged.boolean_mask(rows, in_mask), L, 0)
        candidates = left_pad(tf.ragged.boolean_mask(rows, cand_mask), C, 0)  # [B, C]
        # every input positive of the window (not only the last L), the target's item
        # blanked: the user's earlier positives that full ranking leaves out
        seen = in_mask & (raw != target_raw[:, None])
        exclude = left_pad(tf.ragged.boolean_mask(rows, seen), self.max_exclude, 0)
        return {
            "inputs": inputs,
            "input_negatives": left_pad(tf.ragged.boolean_mask(neg_rows, in_mask), L, 0),
            "exclude": exclude,
            "target": self._rows(target_raw),
            "candidates": candidates,
            "candidate_mask": tf.cast(candidates != 0, tf.float32),
            RAW_USER_ID: p[schema.USER_VOCAB],
        }

    def _train(self, rows: tf.Tensor, neg_rows: tf.Tensor, train_mask: tf.Tensor,
               seed: tf.Tensor | None) -> dict[str, tf.Tensor]:
        L = self.max_len  # noqa: N806
        positives = tf.ragged.boolean_mask(rows, train_mask)  # [B, n]
        negatives = tf.ragged.boolean_mask(neg_rows, train_mask)
        targets = left_pad(positives[:, 1:], L, 0)
        mask = targets != 0
        if seed is None:
            seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
        return {
            "inputs": left_pad(positives[:, :-1], L, 0),
            "input_negatives": left_pad(negatives[:, :-1], L, 0),
            "targets": targets,
            "target_negatives": left_pad(negatives[:, 1:], L, 0),
            "random_negatives": self.random_negatives(positives, mask, seed),
            "mask": tf.cast(mask, tf.float32),
        }

    def random_negatives(self, positives: tf.RaggedTensor, mask: tf.Tensor,
                         seed: tf.Tensor) -> tf.Tensor:
        """Rows drawn uniformly from the kept items minus each user's `positives`
        (ragged [B, None] rows), at the `mask` slots ([B, L] bool); row 0 elsewhere.

        With the user's distinct excluded catalogue indices e_0 < e_1 < ... and a draw
        r uniform in [0, N - |e|), the r-th free index is r + #{i : e_i - i <= r}.
        """
        n = tf.constant(self.num_items, tf.int64)
        idx = positives - self.first_row  # catalogue index; OOV rows fall outside
        idx = tf.ragged.boolean_mask(idx, (idx >= 0) & (idx < n)).to_tensor(default_value=n)
        idx = tf.pad(idx, [[0, 0], [0, 1]], constant_values=n)  # [B, P], never empty
        idx = tf.sort(idx, axis=1)
        dup = tf.pad(idx[:, 1:] == idx[:, :-1], [[0, 0], [1, 0]])
        idx = tf.sort(tf.where(dup, n, idx), axis=1)  # distinct, sentinels n last
        real = idx < n
        rank = tf.range(tf.shape(idx, out_type=tf.int64)[1])[None, :]
        shifted = tf.where(real, idx - rank, n)  # e_i - i, nondecreasing; sentinel n
        free = n - tf.reduce_sum(tf.cast(real, tf.int64), axis=1, keepdims=True)  # [B, 1]
        u = tf.random.stateless_uniform(tf.shape(mask), seed, dtype=tf.float64)  # [B, L]
        r = tf.cast(tf.floor(u * tf.cast(free, tf.float64)), tf.int64)
        r = tf.clip_by_value(r, 0, tf.maximum(free - 1, 0))
        x = r + tf.searchsorted(shifted, r, side="right", out_type=tf.int64)  # [B, L]
        return tf.where(mask & (free > 0), self.first_row + x, 0)


def window_size(samples_dir: str) -> int | None:
    """The samples' `max_sequence` (events per window) from their `manifest.json`, or
    None when there is no manifest or it does not say."""
    manifest = read_manifest(samples_dir) or {}
    value = ((manifest.get("config") or {}).get("samples") or {}).get("max_sequence")
    return int(value) if isinstance(value, int) and value > 0 else None


def make_sequential_dataset(
    samples_dir: str,
    split: str,
    batch_size: int,
    max_len: int,
    negative_rule: str = "previous",
    max_candidates: int = 100,
    training: bool = False,
    seed: int | None = None,
    item_vocab: Vocabulary | None = None,
    vocab: VocabConfig | None = None,
    shuffle_buffer: int = 10_000,
    deterministic: bool = False,
    repeat: bool = False,
    length_buckets: Sequence[int] | None = (),
    max_exclude: int | None = None,
) -> tf.data.Dataset:
    """Batches of one split's windows from `<samples_dir>/sequences/*.tfrecord.gz`.

    Args:
        samples_dir: str. The Beam job's output directory (`samples.task: sequential`).
        split: str. "train", "valid" or "test" (every user has all three).
        batch_size: int. Users per batch.
        max_len: int. L (`SequentialWindows`).
        negative_rule: str. "previous" or "window". Defaults to "previous".
        max_candidates: int. C. Defaults to 100. A user with more skips in the split's
            gap keeps the most recent C; set C to at least the longest gap to rank
            against every skip, as the paper's protocol does.
        training: bool. Shuffle files and users (buffer `shuffle_buffer`) and drop the
            last partial batch (fixed shapes); reads out of order unless
            `deterministic`. Defaults to False.
        seed: int or None. Seeds the shuffles and the random negatives. Defaults to None.
        item_vocab: Vocabulary or None. The item vocabulary; None loads
            `<samples_dir>/vocab/item_id.tsv` with `vocab`. Defaults to None.
        vocab: VocabConfig or None. Trims the loaded vocabulary; None: the defaults.
            Defaults to None.
        shuffle_buffer: int. Users in the shuffle buffer. Defaults to 10000.
        deterministic: bool. Read and parse in order when training. Defaults to False.
        repeat: bool. Repeat forever. Defaults to False.
        length_buckets: list of int or None. Length grouping (module docstring;
            `resolve_buckets`): None = automatic buckets, () = off. Used when
            `training` on the train split, and on the valid and test splits (sorted,
            not shuffled). Defaults to ().
        max_exclude: int or None. The width of `exclude` (`SequentialWindows`); None:
            the samples' `max_sequence` from `manifest.json`, else `max_len`. Defaults
            to None.

    Returns:
        A `tf.data.Dataset` of dicts (module docstring). Without `repeat`, its
        cardinality comes from `manifest.json` when there is one.
    """
    if item_vocab is None:
        item_vocab = Vocabulary.load(samples_dir, schema.ITEM_VOCAB, vocab or VocabConfig())
    if max_exclude is None:
        max_exclude = window_size(samples_dir) or max_len
    windows = SequentialWindows(item_vocab, split, max_len, negative_rule, max_candidates,
                                max_exclude)
    in_order = not training or deterministic
    grouped = training or split != "train"
    buckets = resolve_buckets(max_len, length_buckets) if grouped else []
    chunk = BUCKET_CHUNK * batch_size if buckets else batch_size
    ds = record_batches(samples_dir, SEQUENCES, chunk, training=training, seed=seed,
                        shuffle_buffer=shuffle_buffer, in_order=in_order, repeat=repeat,
                        drop_remainder=training and not buckets)
    if split == "train":
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            windows, num_parallel_calls=AUTOTUNE, deterministic=in_order)
        if buckets:
            ds = group_by_length(ds, batch_size, buckets, max_len, seed)
            examples = None if repeat else manifest_examples(samples_dir, SEQUENCES)
            if examples is not None:
                ds = ds.apply(tf.data.experimental.assert_cardinality(examples // batch_size))
    else:
        ds = ds.map(windows, num_parallel_calls=AUTOTUNE, deterministic=in_order)
        if buckets:
            ds = group_eval_by_length(ds, batch_size, buckets, max_len)
            examples = None if repeat else manifest_examples(samples_dir, SEQUENCES)
            if examples is not None:
                ds = ds.apply(tf.data.experimental.assert_cardinality(
                    -(-examples // batch_size)))
    return ds.prefetch(AUTOTUNE)

