"""Serving signatures of an exported CTR model (TensorFlow only).

Ids are raw; the lookups run inside the graph; H = `samples.max_history`.

`serving_default` (JSON-friendly, one row per user):

    user_id                          int64 [B]
    pos_item_id, pos_order           int64 [B, W+]  oldest first, left-padded with -1 ids
    neg_item_id, neg_order           int64 [B, W-]  (0 orders); padded in the graph to H
    item_id                          int64 [B, C]   C >= 1 candidates
    user_<f> (samples.user_features) int64 [B]
    item_<f> (samples.item_features) int64 [B, C]   side feature of each candidate
    -> probability                   float32 [B, C]

Histories: a batch mixing history lengths is left-padded by the client with -1 ids /
0 orders. A history that is not left-padded (a -1 id after a real one) or whose orders
do not increase strictly along its real entries fails a `tf.debugging` assertion
naming the field (InvalidArgumentError; HTTP 400 from TF Serving and from the bundled
server), as does C = 0 ("empty candidate list"). A history wider than H keeps its most
recent H entries, as training does: the Beam job keeps each sample's most recent
`max_history` events and the tf.data parser (`left_pad`) keeps the last H of a longer
list. The model builds the mixed-polarity sequence (and PBE, and OneTrans' behaviour-side
keys and values) once per user (`CtrModel.score_candidates`), then scores the B * C
(user, candidate) rows; a model without that split (CAIN) gets the user-level tensors
tiled over the candidates.

`score_examples`: `examples` string [B] (serialized tf.Example in the Beam job's format,
parsed by the training `FeatureProcessor`) -> `probability` float32 [B]. Features the
model does not read (`label`, `timestamp`, `order`) may be left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfnegseq import schema
from tfnegseq.config import Config
from tfnegseq.signatures import (
    EXAMPLES_INPUT,
    EXAMPLES_SIGNATURE,
    OUTPUT,
    SERVING_SIGNATURE,
    warmup_record,
)

# Warm-up requests: (batch size, candidates per row) for serving_default, batch sizes for
# score_examples. Small, so a server's start-up stays fast.
WARMUP_SERVING = ((1, 10), (4, 3))
WARMUP_EXAMPLES = (1, 8)
HISTORIES = ("pos", "neg")
# The lifelong sequence (CAIN and the lifelong-attention baselines, kind `cain`): served
# like the histories, as raw lists (ids, 1-based orders, polarity, float value), the
# most recent `samples.lifelong_length` kept.
LIFELONG = ("life_item_id", "life_order", "life_polarity", "life_value")


def lifelong_inputs(cfg: Config) -> tuple[str, ...]:
    """The lifelong lists, for a model section that reads them (`lifelong_length`):
    `LIFELONG` and `life_item_<f>` for each of `samples.lifelong_item_features`."""
    if getattr(cfg.model, "lifelong_length", 0) <= 0:
        return ()
    return LIFELONG + tuple(f"life_item_{f}" for f in cfg.samples.lifelong_item_features)


def histories(cfg: Config) -> tuple[str, ...]:
    """Prefixes of the id / order list pairs served (`pos`, `neg`, and `life`)."""
    return HISTORIES + (("life",) if lifelong_inputs(cfg) else ())


def side_feature_names(cfg: Config) -> list[str]:
    """The profile / side feature inputs: `user_<f>` then `item_<f>`."""
    return [f"user_{f}" for f in cfg.samples.user_features] + [
        f"item_{f}" for f in cfg.samples.item_features
    ]


def model_inputs(cfg: Config) -> list[str]:
    """The (looked-up) features `CtrModel` reads."""
    return ["user_id", "item_id", "pos_item_id", "pos_order", "neg_item_id", "neg_order",
            *lifelong_inputs(cfg), *side_feature_names(cfg)]


def serving_inputs(cfg: Config) -> dict[str, tuple[str, str | None]]:
    """`serving_default` inputs: name -> (kind, vocabulary).

    kind is "user" ([B]), "history" ([B, None]) or "candidate" ([B, C]); vocabulary is
    the id vocabulary the input is looked up in, or None (orders).
    """
    fmap = schema.feature_map(cfg.samples)
    out: dict[str, tuple[str, str | None]] = {}
    names = ["user_id", "pos_item_id", "pos_order", "neg_item_id", "neg_order",
             *lifelong_inputs(cfg), "item_id"]
    for name in names + side_feature_names(cfg):
        f = fmap[name]
        if f.is_list:
            kind = "history"
        elif name == "item_id" or name.startswith("item_"):
            kind = "candidate"
        else:
            kind = "user"
        out[name] = (kind, f.vocab)
    return out


def signature_description(cfg: Config) -> dict[str, Any]:
    """The signatures' inputs and outputs, for the export's metadata file."""
    return {
        SERVING_SIGNATURE: {
            "inputs": {n: k for n, (k, _) in serving_inputs(cfg).items()},
            "outputs": {OUTPUT: "float32 [B, C]"},
        },
        EXAMPLES_SIGNATURE: {
            "inputs": {EXAMPLES_INPUT: "string [B]"},
            "outputs": {OUTPUT: "float32 [B]"},
        },
    }


def _input_specs(cfg: Config) -> dict[str, Any]:
    shapes = {"user": [None], "history": [None, None], "candidate": [None, None]}
    fmap = schema.feature_map(cfg.samples)
    return {
        name: tf.TensorSpec(shapes[kind], tf.as_dtype(fmap[name].dtype), name=name)
        for name, (kind, _) in serving_inputs(cfg).items()
    }


def _history_checks(features: Mapping[str, tf.Tensor], prefixes: tuple[str, ...]) -> list[Any]:
    """Assertions that each history is left-padded and strictly increasing in order
    (and that the lists of one history have one shape)."""
    checks = []
    for prefix in prefixes:
        ids, orders = features[f"{prefix}_item_id"], features[f"{prefix}_order"]
        shapes = []
        for other in sorted(n for n in features if n.startswith(f"{prefix}_")):
            if other == f"{prefix}_item_id":
                continue
            shapes.append(
                tf.debugging.assert_equal(
                    tf.shape(ids), tf.shape(features[other]),
                    message=f"{prefix}_item_id and {other} need the same shape",
                )
            )
        checks += shapes
        # The checks below compare ids and orders element-wise: only after the shapes
        # agree, or a ragged list fails first with an "Incompatible shapes" error that
        # names no field (which error won depended on op scheduling).
        with tf.control_dependencies(shapes):
            ids, orders = tf.identity(ids), tf.identity(orders)
        real = tf.not_equal(ids, schema.PAD_ID)  # [B, W]
        # Left-padded: once a row has a real id, every later entry is real.
        checks.append(
            tf.debugging.assert_equal(
                tf.reduce_any(tf.logical_and(real[:, :-1], tf.logical_not(real[:, 1:]))),
                False,
                message=f"{prefix}_item_id is not left-padded: a padding id "
                f"({schema.PAD_ID}) follows a real id; put padding first, oldest event "
                "next, most recent last",
            )
        )
        both = tf.logical_and(real[:, :-1], real[:, 1:])  # consecutive real entries
        checks.append(
            tf.debugging.assert_equal(
                tf.reduce_any(tf.logical_and(both, orders[:, 1:] <= orders[:, :-1])),
                False,
                message=f"{prefix}_order must increase strictly along the real entries "
                "of each row (oldest first)",
            )
        )
    return checks


def request_checks(features: Mapping[str, tf.Tensor], kinds: Mapping[str, str],
                   prefixes: tuple[str, ...]) -> list[Any]:
    """Every assertion `serving_default` makes of a request: at least one candidate;
    each input (`kinds`: name -> "candidate", "history", ...) has item_id's batch size;
    each candidate input one value per candidate; each history (`prefixes`) as
    `_history_checks`."""
    candidates = features["item_id"]  # [B, C]
    batch, num = tf.shape(candidates)[0], tf.shape(candidates)[1]
    checks = [
        tf.debugging.assert_greater_equal(
            num, 1, message="empty candidate list: item_id needs at least one candidate"
        )
    ]
    for name, kind in kinds.items():
        x = features[name]
        checks.append(
            tf.debugging.assert_equal(
                tf.shape(x)[0], batch, message=f"batch size of {name} differs from that of item_id"
            )
        )
        if kind == "candidate" and name != "item_id":
            checks.append(
                tf.debugging.assert_equal(
                    tf.shape(x)[1], num,
                    message=f"{name} needs one value per candidate in item_id",
                )
            )
    return checks + _history_checks(features, prefixes)


def build_module(model: Any, processor: Any, cfg: Config, share_user_side: bool = True) -> Any:
    """A `tf.Module` with the two serving functions (see the module docstring).

    `serving_default` computes the user side (lookups, the mixed sequence, PBE, OneTrans'
    behaviour keys and values) once per user when the model supports it
    (`CtrModel.score_candidates`); `share_user_side=False` scores every (user,
    candidate) row on its own (the path before; kept for the benchmark).

    Tracks the model's variables and the lookup tables, not the Keras objects, so the
    SavedModel loads with TensorFlow alone.
    """
    inputs = serving_inputs(cfg)
    model_keys = model_inputs(cfg)
    max_lengths = processor.max_lengths
    prefixes = histories(cfg)
    lookups = processor.lookups
    shared = getattr(model, "shares_user_side", False) if share_user_side else False

    def serve(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        batch, num = tf.shape(features["item_id"])[0], tf.shape(features["item_id"])[1]
        checks = request_checks(features, {n: kind for n, (kind, _) in inputs.items()},
                                prefixes)
        users: dict[str, tf.Tensor] = {}
        candidates: dict[str, tf.Tensor] = {}
        with tf.control_dependencies(checks):
            for name, (kind, vocab) in inputs.items():
                x = tf.identity(features[name])
                if kind == "history":
                    length = max_lengths[name]
                    x = x[:, -length:]  # the most recent H (or N), as training keeps
                    pad = schema.PAD_ID if vocab else 0
                    width = tf.maximum(length - tf.shape(x)[1], 0)
                    x = tf.pad(x, [[0, 0], [width, 0]], constant_values=tf.cast(pad, x.dtype))
                    x.set_shape([None, length])  # [B, H]
                if vocab:
                    x = tf.cast(lookups[vocab](x), tf.int64)
                if kind == "candidate":
                    candidates[name] = tf.reshape(x, [-1])  # [B * C]
                else:
                    users[name] = x  # [B] or [B, H]
        if shared:  # the user side once per user, the rest per candidate
            keep = set(model_keys)
            out = model.score_candidates({k: v for k, v in users.items() if k in keep},
                                         {k: v for k, v in candidates.items() if k in keep},
                                         num, training=False)
        else:  # every (user, candidate) row on its own
            rows = {**{k: tf.repeat(v, num, axis=0) for k, v in users.items()}, **candidates}
            out = model({k: rows[k] for k in model_keys}, training=False)
        probability = tf.reshape(tf.cast(out["probability"], tf.float32), [batch, num])
        return {OUTPUT: probability}  # [B, C]

    def score_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        features, _ = processor(examples)
        out = model({k: features[k] for k in model_keys}, training=False)
        return {OUTPUT: tf.cast(out["probability"], tf.float32)}  # [B]

    module = tf.Module(name="tfnegseq_ctr")
    module.model_variables = list(model.variables)
    module.lookup_tables = [lookups[name].lookup_table for name in sorted(lookups)]
    module.serve = tf.function(
        serve, input_signature=[_input_specs(cfg)], jit_compile=False, autograph=False
    )
    module.score_examples = tf.function(
        score_examples,
        input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)],
        jit_compile=False,
        autograph=False,
    )
    return module


def raw_serving_batch(
    examples: list[bytes], cfg: Config, batch: int, candidates: int
) -> dict[str, np.ndarray]:
    """`serving_default` inputs (raw ids) built from real samples.

    Row b takes the user-level features and histories of `examples[b]`; its candidates
    are the target items (with their side features) of `candidates` consecutive samples.
    Histories are left-padded with -1 ids / 0 orders to the longest in the batch.
    """
    parsed = tf.io.parse_example(tf.constant(examples), schema.parse_spec(cfg.samples))
    fmap = schema.feature_map(cfg.samples)
    out: dict[str, np.ndarray] = {}
    for name, (kind, vocab) in serving_inputs(cfg).items():
        x = parsed[name]
        if kind == "history":
            dtype = np.dtype(fmap[name].dtype)
            rows = [r[-fmap[name].max_len:] for r in x[:batch].to_list()]
            width = max(1, max(len(r) for r in rows))
            pad = schema.PAD_ID if vocab else 0
            out[name] = np.asarray([[pad] * (width - len(r)) + r for r in rows], dtype)
        elif kind == "candidate":
            values = x.numpy()
            idx = (np.arange(batch)[:, None] + np.arange(candidates)[None, :]) % len(values)
            out[name] = values[idx].astype(np.int64)
        else:
            out[name] = x.numpy()[:batch].astype(np.int64)
    return out


def warmup_records(model_name: str, examples: list[bytes], cfg: Config) -> list[bytes]:
    """Serialized `PredictionLog`s with real `PredictRequest`s for both signatures.

    Uses the `tensorflow_serving.apis` protos (package `tensorflow-serving-api`, which
    tfx-bsl depends on).
    """
    def record(signature: str, inputs: Mapping[str, np.ndarray]) -> bytes:
        return warmup_record(model_name, signature, inputs)

    out = [
        record(SERVING_SIGNATURE, raw_serving_batch(examples, cfg, b, c)) for b, c in WARMUP_SERVING
    ]
    for b in WARMUP_EXAMPLES:
        batch = np.asarray([examples[i % len(examples)] for i in range(b)], dtype=object)
        out.append(record(EXAMPLES_SIGNATURE, {EXAMPLES_INPUT: batch}))
    return out
