"""Beam PTransforms of the sample-building job (entry point: `beam_jobs/build_samples.py`).

    files -> ReadParse (chunked, dead letters) -> rules -> (user, EventChunk)
          -> GroupByKey(user) -> [k-core rounds] -> BuildSamples (per user, batched)
          -> tf.Example (tfx-bsl) -> gzip TFRecord shards per split
    plus vocabularies with counts over the training split (see `BuildSamplesFn`), dead
    letters (JSONL) and stats; the driver turns the stats into `manifest.json` and
    writes `schema.pbtxt`.

Every DoFn is picklable (configs are dataclasses) and does its expensive set-up in
`setup()`, so the job runs unchanged on DirectRunner (in-process or multi_processing)
and on Dataflow. Per-user logic lives in `tfnegseq.data.samples` and is tested there.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from tfnegseq.config import Config
from tfnegseq.data.events import EventChunk
from tfnegseq.data.samples import (
    SPLITS,
    SideTables,
    SplitAssigner,
    UserStats,
    build_ctr_samples,
    build_sequential_sample,
    count_ctr_batch,
    ctr_vocab_counts,
    sequential_vocab_counts,
)

MAIN = "main"
DEAD_LETTER = "dead_letter"
VOCAB = "vocab"
STATS = "stats"
SEQUENCES = "sequences"  # the sequential task's one-example-per-user output
KCORE_RESIDUAL = "kcore_residual"
TRAIN = SPLITS.index("train")


def _global(value: Any) -> Any:
    return GlobalWindows.windowed_value(value)


class ReadParseFn(beam.DoFn):
    """(file_index, path) -> (user_id, EventChunk) per user per chunk; dead letters.

    Events whose timestamp falls outside `[min_timestamp, max_timestamp]` (ms since the
    epoch) are dead letters, so one absurd timestamp cannot stretch the temporal split's
    span. The bounds default to `source.min_timestamp` / `source.max_timestamp` when
    the config has them, else to 1970-01-01 and the time this DoFn is built (the job's
    start, on the driver) plus one day.
    """

    def __init__(self, cfg: Config, chunk_rows: int = 50_000,
                 min_timestamp: int | None = None, max_timestamp: int | None = None):
        from tfnegseq.data.sources import timestamp_bounds

        self._cfg = cfg
        self._chunk_rows = chunk_rows
        if min_timestamp is None:
            min_timestamp = cfg.source.min_timestamp
        if max_timestamp is None:
            max_timestamp = cfg.source.max_timestamp
        self._bounds = timestamp_bounds(min_timestamp, max_timestamp)

    def setup(self) -> None:
        from tfnegseq.data.sources import make_source

        self._source = make_source(self._cfg.source, *self._bounds)

    def process(self, spec: tuple[int, str]):
        from tfnegseq.data.rules import apply_rules

        index, path = spec
        for chunk, dead in self._source.read_chunks(index, path, self._chunk_rows):
            for d in dead:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, d.to_dict())
            if len(chunk):
                chunk = apply_rules(chunk, self._cfg.rules)
                yield from chunk.split_by_user()


def _merge_chunks(kv: tuple[int, Any]) -> tuple[int, EventChunk]:
    user, chunks = kv
    return user, EventChunk.concat(list(chunks))


class KCoreRoundFn(beam.DoFn):
    """One round of iterative k-core filtering over user-grouped events: drops events of
    items with fewer than k events (counts from the previous round), then users with
    fewer than k events."""

    def __init__(self, k: int):
        self._k = k

    def process(self, kv: tuple[int, EventChunk], item_counts: dict[int, int]):
        user, ev = kv
        counts = np.fromiter((item_counts.get(int(i), 0) for i in ev.item_id), np.int64, len(ev))
        ev = ev.take(counts >= self._k)
        if len(ev) >= self._k:
            yield user, ev


class KCoreResidualFn(beam.DoFn):
    """Events that one more k-core round would still remove (0 when converged)."""

    def __init__(self, k: int):
        self._k = k

    def process(self, kv: tuple[int, EventChunk], item_counts: dict[int, int]):
        _, ev = kv
        counts = np.fromiter((item_counts.get(int(i), 0) for i in ev.item_id), np.int64, len(ev))
        kept = int((counts >= self._k).sum())
        yield len(ev) if kept < self._k else len(ev) - kept


def _item_counts(kv: tuple[int, EventChunk]):
    ids, counts = np.unique(kv[1].item_id, return_counts=True)
    return zip(ids.tolist(), counts.tolist(), strict=True)


class BuildSamplesFn(beam.DoFn):
    """(user, EventChunk) -> serialized tf.Examples tagged by split, plus vocabulary
    counts and stats aggregated per bundle (few elements, not one per event).

    A user whose sample building raises becomes a dead letter (`user_id`, `events`,
    `samples_written`, `reason`) and the job goes on. Samples are streamed, a batch at
    a time, so the batches written before the failure stay written (they are complete,
    leakage-free samples) and `samples_written` says how many; stats and vocabularies
    count exactly the written ones.

    Vocabularies count the training split only, so valid / test frequencies never
    decide `min_count` / `max_size` and ids first seen there map to OOV buckets: CTR
    counts the train split's samples (`samples.ctr_vocab_counts`), the sequential task
    each user's training events, `seq_*[:valid_index]` (`samples.sequential_vocab_counts`).
    """

    def __init__(self, cfg: Config):
        self._cfg = cfg

    def setup(self) -> None:
        from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

        from tfnegseq.data.sources import make_source

        self._encoder = RecordBatchToExamplesEncoder()
        src = make_source(self._cfg.source)
        s = self._cfg.samples
        self._side = SideTables(
            users=src.user_profiles(list(s.user_features)) if s.user_features else {},
            items=src.item_features(list(s.item_features)) if s.item_features else {},
        )

    def start_bundle(self) -> None:
        self._stats = UserStats()
        self._vocab: Counter[tuple[str, int]] = Counter()

    def process(self, kv: tuple[int, EventChunk], cutoffs: tuple[int, int] | None = None):
        user, events = kv
        written = 0
        try:
            for tag, examples in self._build(events, cutoffs):
                for ex in examples:
                    yield beam.pvalue.TaggedOutput(tag, ex)
                written += len(examples)
        except Exception as e:  # noqa: BLE001 - one user's failure never fails the job
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {
                "user_id": int(user),
                "events": len(events),
                "samples_written": written,
                "reason": f"{type(e).__name__}: {e}",
            })

    def _build(self, events: EventChunk, cutoffs: tuple[int, int] | None):
        """(output tag, serialized examples) per batch of one user. A batch's stats and
        vocabulary counts are added only once it is fully encoded, just before it is
        handed out, so they count exactly the examples written."""
        s = self._cfg.samples
        if s.task == "sequential":
            stats = UserStats()
            batch = build_sequential_sample(events, s, self._side, stats)
            vocab = Counter() if batch is None else sequential_vocab_counts(
                batch, events, s, self._side)
            examples = [] if batch is None else self._encoder.encode(batch)
            self._stats = self._stats.merge(stats)
            self._vocab.update(vocab)
            if examples:
                yield SEQUENCES, examples
            return
        splitter = SplitAssigner(self._cfg.split, *(cutoffs or (None, None)))
        for split, batch in build_ctr_samples(events, s, splitter, self._side):
            examples = self._encoder.encode(batch)
            vocab = ctr_vocab_counts(batch, s) if split == TRAIN else Counter()
            count_ctr_batch(self._stats, split, batch)
            self._vocab.update(vocab)
            yield SPLITS[split], examples

    def finish_bundle(self):
        if self._vocab:
            yield beam.pvalue.TaggedOutput(VOCAB, _global(list(self._vocab.items())))
        yield beam.pvalue.TaggedOutput(STATS, _global(self._stats))


def _merge_stats(stats: list[UserStats]) -> UserStats:
    out = UserStats()
    for s in stats:
        out = out.merge(s)
    return out


def _minmax(pairs):
    pairs = list(pairs)
    if not pairs:
        return None
    return min(p[0] for p in pairs), max(p[1] for p in pairs)


class WriteVocabFn(beam.DoFn):
    """(vocab name, [(id, count)]) -> `<out>/vocab/<name>.tsv`, sorted by count desc,
    then id; one `id<TAB>count` line each."""

    def __init__(self, out_dir: str):
        self._out = out_dir

    def process(self, kv: tuple[str, Any]):
        name, pairs = kv
        rows = sorted(pairs, key=lambda p: (-p[1], p[0]))
        path = FileSystems.join(self._out, "vocab", f"{name}.tsv")
        with FileSystems.create(path) as f:
            f.write("".join(f"{i}\t{c}\n" for i, c in rows).encode())
        yield name, len(rows)


@beam.ptransform_fn
def BuildSamples(  # noqa: N802
    pcoll: beam.PCollection, cfg: Config, min_timestamp: int | None = None,
    max_timestamp: int | None = None,
) -> dict[str, beam.PCollection]:
    """Files `(index, path)` -> dict of PCollections: one per split (serialized
    tf.Examples), `dead_letter` (dicts: the rows `ReadParseFn` refused, with file, line,
    raw and reason, and the users `BuildSamplesFn` failed on, with user_id and reason),
    `vocab` ((name, id), count) and `stats`. `min_timestamp` / `max_timestamp`: see
    `ReadParseFn`."""
    read = ReadParseFn(cfg, min_timestamp=min_timestamp, max_timestamp=max_timestamp)
    parsed = pcoll | "ReadParse" >> beam.ParDo(read).with_outputs(
        DEAD_LETTER, main=MAIN
    )
    users = (
        parsed[MAIN]
        | "GroupByUser" >> beam.GroupByKey()
        | "MergeUserChunks" >> beam.Map(_merge_chunks)
    )
    k = cfg.samples.min_core if cfg.samples.task == "sequential" else 0
    for r in range(cfg.samples.min_core_rounds if k > 1 else 0):
        counts = (
            users
            | f"ItemCounts{r}" >> beam.FlatMap(_item_counts)
            | f"SumItemCounts{r}" >> beam.CombinePerKey(sum)
        )
        users = users | f"KCore{r}" >> beam.ParDo(KCoreRoundFn(k), beam.pvalue.AsDict(counts))
    residual = None
    if k > 1:
        last = (
            users
            | "ItemCountsFinal" >> beam.FlatMap(_item_counts)
            | "SumItemCountsFinal" >> beam.CombinePerKey(sum)
        )
        residual = (
            users
            | "KCoreResidual" >> beam.ParDo(KCoreResidualFn(k), beam.pvalue.AsDict(last))
            | "SumResidual" >> beam.CombineGlobally(sum)
        )
    side_inputs = []
    if cfg.samples.task == "ctr" and cfg.split.kind == "temporal":
        span = (
            parsed[MAIN]
            | "ChunkSpan" >> beam.Map(lambda kv: (int(kv[1].timestamp.min()),
                                                  int(kv[1].timestamp.max())))
            | "GlobalSpan" >> beam.CombineGlobally(_minmax)
            | "Cutoffs" >> beam.Map(
                lambda mm: SplitAssigner.temporal_cutoffs(cfg.split, *mm) if mm else (0, 0)
            )
        )
        side_inputs.append(beam.pvalue.AsSingleton(span))
    built = users | "BuildSamples" >> beam.ParDo(BuildSamplesFn(cfg), *side_inputs).with_outputs(
        *SPLITS, SEQUENCES, VOCAB, STATS, DEAD_LETTER
    )
    dead = (parsed[DEAD_LETTER], built[DEAD_LETTER]) | "FlattenDeadLetters" >> beam.Flatten()
    vocab = (
        built[VOCAB]
        | "FlattenVocab" >> beam.FlatMap(lambda items: items)
        | "SumVocab" >> beam.CombinePerKey(sum)
    )
    stats = built[STATS] | "MergeStats" >> beam.CombineGlobally(_merge_stats)
    out = {s: built[s] for s in (*SPLITS, SEQUENCES)}
    out.update({DEAD_LETTER: dead, VOCAB: vocab, STATS: stats})
    if residual is not None:
        out[KCORE_RESIDUAL] = residual
    return out


def _stats_to_dict(stats: UserStats, dead: int, vocab_sizes: list[tuple[str, int]],
                   sequential: bool = False, kcore_residual: list[int] | None = None,
                   dead_users: int = 0):
    total = int(stats.samples.sum())
    if sequential:  # one example per user, counted in slot 2
        samples = {SEQUENCES: int(stats.samples[2])}
        positives = {SEQUENCES: int(stats.positives[2])}
    else:
        samples = {s: int(stats.samples[i]) for i, s in enumerate(SPLITS)}
        positives = {s: int(stats.positives[i]) for i, s in enumerate(SPLITS)}
    return {
        "samples": samples,
        "positives": positives,
        "kcore_residual_events": kcore_residual[0] if kcore_residual else None,
        "pos_len_sum": stats.pos_len_sum,
        "neg_len_sum": stats.neg_len_sum,
        "pos_len_max": stats.pos_len_max,
        "neg_len_max": stats.neg_len_max,
        "excluded": stats.excluded,
        "dead_letters": dead,
        "dead_letter_users": dead_users,
        "vocab_sizes": dict(vocab_sizes),
        "total": total,
    }


@beam.ptransform_fn
def WriteOutputs(outputs: dict[str, beam.PCollection], cfg: Config) -> beam.PCollection:  # noqa: N802
    """Writes shards, dead letters, vocabularies and `_stats.json` under output.dir."""
    out = cfg.output.dir
    sequential = cfg.samples.task == "sequential"
    splits = (SEQUENCES,) if sequential else SPLITS
    for s in splits:
        outputs[s] | f"Write_{s}" >> beam.io.WriteToTFRecord(
            FileSystems.join(out, s, "part"),
            file_name_suffix=".tfrecord.gz",
            num_shards=cfg.output.shards,
            compression_type=beam.io.filesystem.CompressionTypes.GZIP,
        )
    dead = outputs[DEAD_LETTER]
    dead | "DeadToJson" >> beam.Map(lambda d: json.dumps(d, sort_keys=True)) | (
        "WriteDead" >> beam.io.WriteToText(
            FileSystems.join(out, "dead_letters", "part"), file_name_suffix=".jsonl",
            num_shards=1, shard_name_template="-SSSSS-of-NNNNN",
        )
    )
    dead_count = dead | "CountDead" >> beam.combiners.Count.Globally()
    dead_users = (
        dead
        | "DeadUsers" >> beam.Filter(lambda d: "user_id" in d)
        | "CountDeadUsers" >> beam.combiners.Count.Globally()
    )
    sizes = (
        outputs[VOCAB]
        | "ByVocab" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
        | "GroupVocab" >> beam.GroupByKey()
        | "WriteVocab" >> beam.ParDo(WriteVocabFn(out))
    )
    return (
        outputs[STATS]
        | "StatsToDict" >> beam.Map(
            _stats_to_dict,
            dead=beam.pvalue.AsSingleton(dead_count),
            vocab_sizes=beam.pvalue.AsList(sizes),
            sequential=sequential,
            kcore_residual=(beam.pvalue.AsList(outputs[KCORE_RESIDUAL])
                            if KCORE_RESIDUAL in outputs else None),
            dead_users=beam.pvalue.AsSingleton(dead_users),
        )
        | "StatsJson" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
        | "WriteStats" >> beam.io.WriteToText(
            FileSystems.join(out, "_stats"), file_name_suffix=".json", num_shards=1,
            shard_name_template="",
        )
    )
