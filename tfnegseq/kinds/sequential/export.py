"""Serving signatures of an exported sequential model (TensorFlow only).

Ids are raw; the item lookup runs inside the graph; L = `model.max_length`,
N = the catalogue (the item vocabulary's kept ids), K = min(`model.retrieve_k`, N).

A user's history, in both signatures:

    pos_item_id    int64 [B, W]  the positive items, oldest first, left-padded with -1
    neg_item_id    int64 [B, W]  the nearest passive negative of each positive (same
                                 slot), -1 where it has none and at padding

`neg_item_id` is what SINE's sub-interest assignment reads (eq. 4-5): for the
positive at timeline position j, with the config's `model.negative_rule`, "previous"
(the default, the official code's) takes the event at j - 1 when it is a passive
negative, "window" the latest passive negative since the previous positive
(`tfnegseq.data.sequential.nearest_negative_positions`). The baselines ignore it
(send -1s).

`score`:    history + `item_id` int64 [B, C] candidates (C >= 1)
            -> `score` float32 [B, C] (a -1 candidate scores the padding row: drop it)
`retrieve`: history -> `item_id` int64 [B, K], `score` float32 [B, K]: the top K of
            the catalogue, best first, the items of `pos_item_id` left out (every
            sent positive, also those older than L; passive negatives stay
            rankable). A user whose history leaves fewer than K items fills the
            remaining slots with id -1 and score `EMPTY_SCORE` (float32's lowest).

Scores are the model's own (`SequentialRecommender` called on its evaluation inputs,
`candidate_scores`): higher is better, not probabilities. Histories are validated as
the CTR export's are: a `pos_item_id` that is not left-padded (-1 after a real id), a
`neg_item_id` of another shape or with an id where `pos_item_id` is padding, or
C = 0 fail a `tf.debugging` assertion naming the input (InvalidArgumentError: HTTP
400 from TF Serving and from the bundled server). A history longer than L keeps its
most recent L positives (and their negatives), as training does (`left_pad`);
shorter ones are padded to L inside the graph, and an empty one (W = 0 or all -1)
is scored as a user without history. Unknown ids land in the OOV rows, as in
training: never retrieved, never excluded.

Retrieval, SASRec, SASRec-N, GRU4Rec and SINE (unless `model.rank_chunk_size` is set
below the catalogue): `model.catalogue_scores` scores the user's state against the
item table in place (one `[B, d] x [d, N]` product; SINE's fusion, eq. 12-14, on
`[B, K, N]` dot products, never a `[B, N, d]` gather), the user's positives are set to
-inf by one scatter, and one `tf.math.top_k` keeps the best K (ties to the lower
vocabulary row). DIN (its score costs O(L) attention per item) and a set
`rank_chunk_size`: the model is called on the catalogue as candidates,
`model.rank_chunk_size()` items at a time, keeping a running top K (the same ties).
Memory per graph run: B x N scores (x K for SINE), or B x chunk item rows (x L for
DIN). `keras_rs.layers.BruteForceRetrieval`
(keras-rs 0.4) does not fit: it scores by a dot product of one query vector with each
candidate (SINE's score is the adaptive fusion over K sub-interests, eq. 12-14; DIN's
state depends on the item), keeps candidate ids as int32 (raw ids are int64 up to
2^63), copies the table into its own variable, and cannot leave out a user's own
history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfnegseq import schema
from tfnegseq.config import Config
from tfnegseq.kinds.sequential.config import SequentialModelConfig
from tfnegseq.signatures import RETRIEVE_SIGNATURE, SCORE_SIGNATURE, warmup_record

HISTORY = "pos_item_id"  # the names the local server caps as history (`pos_*`, `neg_*`)
NEGATIVES = "neg_item_id"
CANDIDATES = "item_id"  # ... and as candidates
SCORE = "score"
ITEM_ID = "item_id"
EMPTY_SCORE = float(np.finfo(np.float32).min)
ITEM_VOCAB = schema.ITEM_VOCAB
# Warm-up requests: (batch size, candidates per row) for `score`, batch sizes for
# `retrieve`. Small, so a server's start-up stays fast.
WARMUP_SCORE = ((1, 10), (4, 3))
WARMUP_RETRIEVE = (1, 4)


def _section(cfg: Config) -> SequentialModelConfig:
    assert isinstance(cfg.model, SequentialModelConfig), cfg.model
    return cfg.model


def retrieve_k(model: Any, cfg: Config) -> int:
    """K of the `retrieve` signature: `model.retrieve_k`, at most the catalogue size."""
    return min(_section(cfg).retrieve_k, int(model.num_items) - int(model.catalogue_start))


def signature_description(cfg: Config, k: int) -> dict[str, Any]:
    """The signatures' inputs and outputs, for the export's metadata file."""
    m = _section(cfg)
    history = {
        HISTORY: "int64 [B, W] positives, oldest first, left-padded with -1",
        NEGATIVES: "int64 [B, W] nearest passive negative of each positive, -1 if none "
        f"(model.negative_rule={m.negative_rule!r})",
    }
    return {
        SCORE_SIGNATURE: {
            "inputs": {**history, CANDIDATES: "int64 [B, C] candidates, C >= 1"},
            "outputs": {SCORE: "float32 [B, C]"},
        },
        RETRIEVE_SIGNATURE: {
            "inputs": history,
            "outputs": {ITEM_ID: f"int64 [B, {k}] best first; -1 = no item left",
                        SCORE: f"float32 [B, {k}]; {EMPTY_SCORE} where item_id is -1"},
            "k": k,
            "excludes": "every item of pos_item_id",
        },
        "max_length": m.max_length,
    }


def _history_checks(pos: tf.Tensor, neg: tf.Tensor) -> list[Any]:
    """Assertions that the history is left-padded and its negatives aligned with it."""
    real = tf.not_equal(pos, schema.PAD_ID)  # [B, W]
    return [
        tf.debugging.assert_equal(
            tf.shape(pos), tf.shape(neg),
            message=f"{NEGATIVES} needs the shape of {HISTORY}: one passive negative "
            f"(or {schema.PAD_ID}) per positive",
        ),
        # Left-padded: once a row has a real id, every later entry is real.
        tf.debugging.assert_equal(
            tf.reduce_any(tf.logical_and(real[:, :-1], tf.logical_not(real[:, 1:]))),
            False,
            message=f"{HISTORY} is not left-padded: a padding id ({schema.PAD_ID}) follows "
            "a real id; put padding first, oldest positive next, most recent last",
        ),
    ]


def _negatives_check(pos: tf.Tensor, neg: tf.Tensor) -> Any:
    # after the shape check (the comparison needs equal shapes)
    return tf.debugging.assert_equal(
        tf.reduce_any(tf.logical_and(tf.equal(pos, schema.PAD_ID),
                                     tf.not_equal(neg, schema.PAD_ID))),
        False,
        message=f"{NEGATIVES} has an id where {HISTORY} is padding ({schema.PAD_ID}); "
        "each negative belongs to the positive in the same slot",
    )


def build_module(model: Any, processor: Any, cfg: Config) -> tuple[Any, int]:
    """A `tf.Module` with the `score` and `retrieve` functions (module docstring), and K.

    Tracks the model's variables, the item lookup table and the catalogue's raw ids,
    not the Keras objects, so the SavedModel loads with TensorFlow alone.

    Raises:
        ValueError: the item vocabulary does not match the model's rows.
    """
    vocab = processor.vocabularies[ITEM_VOCAB]
    if vocab.size != model.num_items or 1 + vocab.oov_buckets != model.catalogue_start:
        raise ValueError(
            f"vocabulary {ITEM_VOCAB!r} has {vocab.size} rows (catalogue from row "
            f"{1 + vocab.oov_buckets}) but the model was trained with {model.num_items} "
            f"(catalogue from row {model.catalogue_start}); the run directory was changed "
            "after training"
        )
    lookup = processor.lookups[ITEM_VOCAB]
    max_length = _section(cfg).max_length
    start, size = int(model.catalogue_start), int(model.num_items) - int(model.catalogue_start)
    k = retrieve_k(model, cfg)
    chunk = int(model.rank_chunk_size())  # catalogue items scored at once per user
    steps = -(-size // chunk)
    catalogue_ids = tf.Variable(np.asarray(vocab.ids, np.int64), trainable=False,
                                name="catalogue_item_ids")  # [N]: row start + i <-> ids[i]

    def rows(raw: tf.Tensor) -> tf.Tensor:
        return tf.cast(lookup(raw), tf.int64)

    def history(pos: tf.Tensor, neg: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """Checked, cut to the most recent L, padded to L and looked up; and the rows of
        every sent positive (for the exclusion), [B, W]."""
        with tf.control_dependencies(_history_checks(pos, neg)):
            with tf.control_dependencies([_negatives_check(pos, neg)]):
                pos, neg = tf.identity(pos), tf.identity(neg)
        fixed = {}
        for key, x in (("inputs", pos), ("input_negatives", neg)):
            x = x[:, -max_length:]  # the most recent L, as training keeps
            width = tf.maximum(max_length - tf.shape(x)[1], 0)
            x = tf.pad(x, [[0, 0], [width, 0]],
                       constant_values=tf.constant(schema.PAD_ID, tf.int64))
            x.set_shape([None, max_length])  # [B, L]
            fixed[key] = rows(x)  # padding -> row 0
        return fixed, rows(pos)

    def score(pos: tf.Tensor, neg: tf.Tensor, items: tf.Tensor) -> dict[str, tf.Tensor]:
        checks = [
            tf.debugging.assert_greater_equal(
                tf.shape(items)[1], 1,
                message=f"empty candidate list: {CANDIDATES} needs at least one candidate"),
            tf.debugging.assert_equal(
                tf.shape(items)[0], tf.shape(pos)[0],
                message=f"batch size of {CANDIDATES} differs from that of {HISTORY}"),
        ]
        with tf.control_dependencies(checks):
            candidates = rows(items)  # [B, C]
        inputs, _ = history(pos, neg)
        out = model({**inputs, "target": candidates[:, 0], "candidates": candidates},
                    training=False)
        return {SCORE: tf.cast(out["candidate_scores"], tf.float32)}  # [B, C]

    whole_table = not model.din and chunk >= size

    def top_of_table(inputs: dict[str, tf.Tensor], seen: tf.Tensor, batch: tf.Tensor
                     ) -> dict[str, tf.Tensor]:
        """The whole catalogue scored against the item table at once
        (`model.catalogue_scores`), the user's positives set to -inf by one scatter,
        one `top_k` (ties to the lower catalogue index)."""
        scores = tf.cast(model.catalogue_scores(inputs), tf.float32)  # [B, N]
        index = seen - start  # [B, W] catalogue index; OOV / padding rows fall below 0
        index = tf.where((index >= 0) & (index < size), index, size)  # size: a spare slot
        users = tf.broadcast_to(tf.range(tf.cast(batch, tf.int64))[:, None], tf.shape(index))
        where = tf.reshape(tf.stack([users, index], axis=-1), [-1, 2])
        hit = tf.scatter_nd(where, tf.ones([tf.shape(where)[0]], tf.int32),
                            tf.cast(tf.stack([batch, size + 1]), tf.int64))[:, :size] > 0
        top, at = tf.math.top_k(tf.where(hit, -np.inf, scores), k=k, sorted=True)  # [B, K]
        kept = tf.logical_not(tf.gather(hit, at, batch_dims=1))
        return {
            ITEM_ID: tf.where(kept, tf.gather(catalogue_ids, at),
                              tf.constant(schema.PAD_ID, tf.int64)),
            SCORE: tf.where(kept, top, tf.constant(EMPTY_SCORE, tf.float32)),
        }

    def retrieve(pos: tf.Tensor, neg: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs, seen = history(pos, neg)
        if whole_table:
            return top_of_table(inputs, seen, tf.shape(seen)[0])
        batch = tf.shape(seen)[0]
        # the user's positives: sorted rows, a -1 sentinel first so no row is empty
        seen = tf.sort(tf.pad(seen, [[0, 0], [1, 0]], constant_values=-1), axis=1)  # [B, W+1]
        last = tf.shape(seen, out_type=tf.int64)[1] - 1
        offsets = tf.range(chunk, dtype=tf.int64)  # [n]

        def merge(i: tf.Tensor, best: tf.Tensor, best_index: tf.Tensor, best_kept: tf.Tensor
                  ) -> tuple[tf.Tensor, ...]:
            """Scores catalogue items i*n .. i*n + n - 1 and keeps the top K so far."""
            index = i * chunk + offsets  # [n] catalogue indices
            real = index < size  # the last chunk may run past the end
            item_rows = tf.minimum(index, size - 1) + start
            candidates = tf.tile(item_rows[None, :], [batch, 1])  # [B, n]
            out = model({**inputs, "target": candidates[:, 0], "candidates": candidates},
                        training=False)
            scores = tf.cast(out["candidate_scores"], tf.float32)  # [B, n]
            at = tf.minimum(tf.searchsorted(seen, candidates, out_type=tf.int64), last)
            kept = tf.logical_and(real[None, :], tf.not_equal(
                tf.gather(seen, at, batch_dims=1), candidates))  # [B, n]: not seen
            # best first, so ties go to the lower catalogue index, as one top_k would
            merged = tf.concat([best, tf.where(kept, scores, -np.inf)], axis=1)
            top, at = tf.math.top_k(merged, k=k, sorted=True)  # [B, K]

            def pick(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
                return tf.gather(tf.concat([x, y], axis=1), at, batch_dims=1)  # [B, K]

            return (i + 1, top, pick(best_index, tf.tile(index[None, :], [batch, 1])),
                    pick(best_kept, kept))

        state = (tf.constant(0, tf.int64), tf.fill([batch, k], tf.constant(-np.inf, tf.float32)),
                 tf.fill([batch, k], tf.constant(0, tf.int64)), tf.zeros([batch, k], tf.bool))
        if steps == 1:
            state = merge(*state)
        else:  # chunks of `model.rank_chunk_size()` items: bounded memory (DIN)
            state = tf.while_loop(lambda i, *_: i < steps, merge, state,
                                  parallel_iterations=1)
        _, top, index, kept = state
        return {
            ITEM_ID: tf.where(kept, tf.gather(catalogue_ids, index),
                              tf.constant(schema.PAD_ID, tf.int64)),  # [B, K] raw ids
            SCORE: tf.where(kept, top, tf.constant(EMPTY_SCORE, tf.float32)),
        }

    def spec(name: str) -> tf.TensorSpec:
        return tf.TensorSpec([None, None], tf.int64, name=name)

    module = tf.Module(name="tfnegseq_sequential")
    module.model_variables = list(model.variables)
    module.lookup_table = lookup.lookup_table
    module.catalogue_ids = catalogue_ids
    module.score = tf.function(
        score, input_signature=[spec(HISTORY), spec(NEGATIVES), spec(CANDIDATES)],
        jit_compile=False, autograph=False)
    module.retrieve = tf.function(
        retrieve, input_signature=[spec(HISTORY), spec(NEGATIVES)],
        jit_compile=False, autograph=False)
    return module, k


# --------------------------------------------------------------------------- requests


def example_history(example: Mapping[str, Any], negative_rule: str = "previous"
                    ) -> tuple[list[int], list[int]]:
    """`(pos_item_id, neg_item_id)` of a user's sequential sample, oldest first: every
    positive before the test target and the nearest passive negative of each (-1 if
    none), the test window's inputs without truncation."""
    from tfnegseq.data.sequential import user_windows

    width = max(1, len(np.asarray(example["seq_item_id"]).ravel()))
    test = user_windows(example, width, negative_rule)["test"]
    pos, neg = test["inputs"], test["input_negatives"]
    n = int(np.sum(pos != schema.PAD_ID))
    return [int(x) for x in pos[len(pos) - n:]], [int(x) for x in neg[len(neg) - n:]]


def pad_histories(histories: Sequence[tuple[Sequence[int], Sequence[int]]]
                  ) -> dict[str, np.ndarray]:
    """`pos_item_id`, `neg_item_id` [B, W] of `(positives, negatives)` pairs,
    left-padded with -1 to the longest (W >= 1)."""
    width = max([1, *(len(p) for p, _ in histories)])
    out = {}
    for name, which in ((HISTORY, 0), (NEGATIVES, 1)):
        out[name] = np.asarray(
            [[schema.PAD_ID] * (width - len(h[which])) + list(h[which]) for h in histories],
            np.int64).reshape(len(histories), width)
    return out


def parse_samples(examples: list[bytes], cfg: Config) -> list[dict[str, Any]]:
    """The sequential samples' features the windows read, as numpy values."""
    keys = ("seq_item_id", "seq_polarity", "valid_index", "valid_item_id", "test_item_id")
    spec = schema.parse_spec(cfg.samples)
    parsed = tf.io.parse_example(tf.constant(examples), {k: spec[k] for k in keys})
    rows: list[dict[str, Any]] = [{} for _ in examples]
    for key in keys:
        x = parsed[key]
        values = x.to_list() if isinstance(x, tf.RaggedTensor) else x.numpy().tolist()
        for row, v in zip(rows, values, strict=True):
            row[key] = np.asarray(v, np.int64)
    return rows


def warmup_records(model_name: str, examples: list[bytes], cfg: Config) -> list[bytes]:
    """Serialized `PredictionLog`s with real `PredictRequest`s for both signatures.

    Histories are the samples' (cut to `model.max_length`); candidates of `score` are
    the test targets of consecutive samples.
    """
    samples = parse_samples(examples, cfg)
    m = _section(cfg)
    max_length = m.max_length
    histories = []
    for s in samples:
        pos, neg = example_history(s, m.negative_rule)
        histories.append((pos[len(pos) - min(len(pos), max_length):],
                          neg[len(neg) - min(len(neg), max_length):]))
    targets = np.asarray([int(s["test_item_id"]) for s in samples], np.int64)

    def batch_of(b: int) -> dict[str, np.ndarray]:
        return pad_histories([histories[i % len(histories)] for i in range(b)])

    def record(signature: str, inputs: Mapping[str, np.ndarray]) -> bytes:
        return warmup_record(model_name, signature, inputs)

    out = []
    for b, c in WARMUP_SCORE:
        idx = (np.arange(b)[:, None] + np.arange(c)[None, :]) % len(targets)
        out.append(record(SCORE_SIGNATURE, {**batch_of(b), CANDIDATES: targets[idx]}))
    out += [record(RETRIEVE_SIGNATURE, batch_of(b)) for b in WARMUP_RETRIEVE]
    return out
