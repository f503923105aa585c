"""tf.data input over the Beam job's TFRecord shards.

The parse spec comes from `tfnegseq.schema` (no second feature list). Each batch is a
`(features, label)` pair with fixed shapes, so XLA compiles once:

    scalars            [B]                 int64 (ids looked up to embedding rows)
    lists              [B, max_len]        left-padded, most recent last; truncated to
                                           the most recent `max_len` when longer;
                                           ids padded with PAD_ID -> row 0, other
                                           lists padded with 0
    label              [B]                 float32
    raw_user_id        [B]                 int64, the user id before the lookup; only
                                           with `keep_raw_ids=True` (evaluation groups
                                           GAUC by it: users hashed into one OOV row
                                           stay apart)

Example:
    ds = make_dataset("build/samples/synthetic", "train", cfg, batch_size=2048,
                      training=True)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import glob
import logging
import os
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from tfnegseq import schema
from tfnegseq.config import Config, ConfigError
from tfnegseq.data.manifest import read_manifest
from tfnegseq.data.vocab import Vocabulary, load_vocabularies

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger("tfnegseq.data.input")
# (process_id, num_processes) while `input_shard` is active: training inputs read only
# this process's files, repeated (multi-process training, tfnegseq/distribute.py)
_SHARD: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "tfnegseq_input_shard", default=None)


def shard_files(files: list[str], process_id: int, num_processes: int,
                where: str = "") -> list[str]:
    """The training files process `process_id` reads: `files[process_id::num_processes]`.
    Refused when there are fewer files than processes; warns when they do not divide
    evenly (the processes then hold different amounts of data)."""
    if len(files) < num_processes:
        raise ConfigError(
            f"{where or 'training input'}: {len(files)} file(s) for {num_processes} "
            "processes; each process reads its own files, so rebuild the samples with "
            f"output.shards >= {num_processes} (a multiple of it)")
    if len(files) % num_processes:
        log.warning("%s: %d files over %d processes: some read one file more than others",
                    where or "training input", len(files), num_processes)
    return files[process_id::num_processes]


@contextlib.contextmanager
def input_shard(process_id: int, num_processes: int) -> Iterator[None]:
    """Inside, every training input built by `record_batches` (the CTR and sequential
    inputs alike) reads the files `files[process_id::num_processes]` and repeats without
    end (the trainer fixes the steps per epoch, the same on every process); evaluation
    inputs read every file."""
    token = _SHARD.set((process_id, num_processes))
    try:
        yield
    finally:
        _SHARD.reset(token)
RAW_USER_ID = "raw_user_id"


def split_files(data_dir: str, split: str) -> list[str]:
    pattern = os.path.join(data_dir, split, "*.tfrecord.gz")
    files = sorted(tf.io.gfile.glob(pattern) if "://" in data_dir else glob.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"no TFRecord shards match {pattern}; run python -m beam_jobs.build_samples first"
        )
    return files


def left_pad(rt: tf.RaggedTensor, max_len: int, pad_value: Any) -> tf.Tensor:
    """[B, None] ragged -> [B, max_len] dense, most recent (last) values at the right end.

    Rows longer than `max_len` keep their last `max_len` values. Built from dense
    kernels only (right-pad, reverse each row's first `length` values, reverse the
    columns): 4x cheaper than gathering every slot from its source column.
    """
    pad = tf.cast(pad_value, rt.dtype)
    dense = rt.to_tensor(default_value=pad)  # [B, W] right-padded, W = longest row
    lengths = tf.cast(rt.row_lengths(), tf.int64)
    reversed_rows = tf.reverse_sequence(dense, lengths, seq_axis=1, batch_axis=0)
    left = tf.reverse(reversed_rows, axis=[1])[:, -max_len:]  # [B, min(W, max_len)]
    width = max_len - tf.shape(left)[1]
    left = tf.pad(left, [[0, 0], [width, 0]], constant_values=pad)
    return tf.ensure_shape(left, [None, max_len])


class FeatureProcessor:
    """Parses serialized tf.Examples into model-ready tensors (pad, truncate, look up).

    Built once per data directory and config; used by `make_dataset` and by the
    export's `score_examples` signature, so both parse the same way.
    """

    def __init__(self, cfg: Config, vocabularies: dict[str, Vocabulary],
                 max_lengths: dict[str, int] | None = None):
        self.cfg = cfg
        self.features = schema.features(cfg.samples)
        self.spec = schema.parse_spec(cfg.samples)
        self.vocabularies = vocabularies
        self.lookups = {name: v.lookup_layer() for name, v in vocabularies.items()}
        self.max_lengths = {f.name: f.max_len for f in self.features if f.is_list}
        self.max_lengths.update(max_lengths or {})

    @classmethod
    def from_data_dir(cls, data_dir: str, cfg: Config, **kw: Any) -> FeatureProcessor:
        return cls(cfg, load_vocabularies(data_dir, schema.vocab_names(cfg.samples), cfg.vocab),
                   **kw)

    def __call__(
        self, serialized: tf.Tensor, keep_raw_ids: bool = False
    ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """Parses a batch of serialized tf.Examples into `(features, label)`.

        Args:
            serialized: string Tensor [B]. Serialized tf.Examples.
            keep_raw_ids: bool. Also return the raw (not looked-up) user id as
                `raw_user_id`, int64 [B]. Defaults to False.
        """
        parsed = tf.io.parse_example(serialized, self.spec)
        out: dict[str, tf.Tensor] = {}
        for f in self.features:
            x = parsed[f.name]
            if f.is_list:
                if f.vocab:  # look up the values only; padding is row 0 (PAD_ID's row)
                    x = x.with_values(tf.cast(self.lookups[f.vocab](x.values), tf.int64))
                x = left_pad(x, self.max_lengths[f.name], 0)
            elif f.vocab:
                x = tf.cast(self.lookups[f.vocab](x), tf.int64)
            out[f.name] = x
        if keep_raw_ids:
            out[RAW_USER_ID] = parsed[schema.USER_VOCAB]
        label = tf.cast(out.pop("label"), tf.float32) if "label" in out else None
        return out, label


def make_dataset(
    data_dir: str,
    split: str,
    cfg: Config,
    batch_size: int,
    training: bool = False,
    processor: FeatureProcessor | None = None,
    repeat: bool = False,
    seed: int | None = None,
    keep_raw_ids: bool = False,
) -> tf.data.Dataset:
    """Batches of `(features, label)` from `<data_dir>/<split>/*.tfrecord.gz`.

    training=True shuffles files and examples (buffer `cfg.train.shuffle_buffer`) and
    drops the last partial batch (fixed shapes for XLA); evaluation keeps every example.
    Training reads files and parses batches out of order unless
    `cfg.train.deterministic_input` is set (evaluation is always in order).
    Without `repeat`, the dataset declares its number of batches from the job's
    `manifest.json` (Keras then shows epoch progress against it), and iterating
    raises if the shards hold a different number of examples than the manifest says.
    keep_raw_ids=True adds `raw_user_id` (the user id before the lookup, int64 [B]) to
    the features, for evaluation to group by; training batches leave it out.
    """
    in_order = not training or cfg.train.deterministic_input
    ds = record_batches(data_dir, split, batch_size, training=training, seed=seed,
                        shuffle_buffer=cfg.train.shuffle_buffer, in_order=in_order,
                        repeat=repeat)
    processor = processor or FeatureProcessor.from_data_dir(data_dir, cfg)
    parse = functools.partial(processor, keep_raw_ids=True) if keep_raw_ids else processor
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=in_order)
    return ds.prefetch(AUTOTUNE)


def record_batches(data_dir: str, split: str, batch_size: int, training: bool = False,
                   seed: int | None = None, shuffle_buffer: int = 0, in_order: bool = True,
                   repeat: bool = False, drop_remainder: bool | None = None
                   ) -> tf.data.Dataset:
    """Batches of serialized records from `<data_dir>/<split>/*.tfrecord.gz` (not parsed).

    training=True shuffles files and records (buffer `shuffle_buffer`) and drops the
    last partial batch (`drop_remainder`: None = `training`); `in_order=False` reads
    files out of order. Without `repeat`, the cardinality is declared from the job's
    manifest when it counts `split`.
    """
    drop = training if drop_remainder is None else drop_remainder
    files = split_files(data_dir, split)
    shard = _SHARD.get() if training else None
    if shard is not None:
        files = shard_files(files, *shard, where=os.path.join(data_dir, split))
        repeat = True
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(files), 4),
        num_parallel_calls=AUTOTUNE,
        deterministic=in_order,
    )
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop, num_parallel_calls=AUTOTUNE)
    examples = None if repeat else manifest_examples(data_dir, split)
    if examples is not None:
        batches = examples // batch_size if drop else -(-examples // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds


def make_datasets(cfg: Config, data_dir: str, processor: FeatureProcessor
                  ) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The CTR samples' training input and evaluation input (`train.eval_split`, with
    the raw user id): what a kind's `make_datasets` returning None trains on."""
    tc = cfg.train
    train_ds = make_dataset(data_dir, "train", cfg, tc.batch_size, training=True,
                            processor=processor, seed=tc.seed)
    eval_ds = make_dataset(data_dir, tc.eval_split, cfg, tc.batch_size, processor=processor,
                           keep_raw_ids=True)
    return train_ds, eval_ds


def manifest_examples(data_dir: str, split: str) -> int | None:
    """The number of examples the Beam job wrote to `split` (its manifest.json), or None
    when there is no manifest or it does not count that split."""
    manifest = read_manifest(data_dir)
    count = None if manifest is None else manifest.get("samples", {}).get(split)
    return int(count) if count is not None else None
