"""Beam PTransforms of the sample-building job (entry point: `beam_jobs/build_samples.py`).

    files -> ReadParse (chunked, dead letters) -> rules -> (user, EventChunk)
          -> GroupByKey(user) -> [k-core rounds] -> BuildSamples (per user, batched)
          -> tf.Example (tfx-bsl) -> gzip TFRecord shards per split
    plus vocabularies with counts, dead letters (JSONL) and stats; the driver turns the
    stats into `manifest.json` and writes `schema.pbtxt`.

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
)

MAIN = "main"
DEAD_LETTER = "dead_letter"
VOCAB = "vocab"
STATS = "stats"
SEQUENCES = "sequences"  # the sequential task's one-example-per-user output
KCORE_RESIDUAL = "kcore_residual"


def _global(value: Any) -> Any:
    return GlobalWindows.windowed_value(value)


class ReadParseFn(beam.DoFn):
    """(file_index, path) -> (user_id, EventChunk) per user per chunk; dead letters."""

    def __init__(self, cfg: Config, chunk_rows: int = 50_000):
        self._cfg = cfg
        self._chunk_rows = chunk_rows

    def setup(self) -> None:
        from tfnegseq.data.sources import make_source

        self._source = make_source(self._cfg.source)

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
    counts and stats aggregated per bundle (few elements, not one per event)."""

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

    def _count_vocab(self, batch: Any) -> None:
        from tfnegseq import schema

        for f in schema.features(self._cfg.samples):
            if not f.vocab or f.is_list:
                continue  # list ids are counted through the item_id / target events
            values = batch.column(f.name).flatten().to_numpy()
            ids, counts = np.unique(values, return_counts=True)
            for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
                self._vocab[(f.vocab, i)] += c

    def process(self, kv: tuple[int, EventChunk], cutoffs: tuple[int, int] | None = None):
        _, events = kv
        s = self._cfg.samples
        if s.task == "sequential":
            batch = build_sequential_sample(events, s, self._side, self._stats)
            if batch is None:
                return
            ids, counts = np.unique(events.item_id, return_counts=True)
            for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
                self._vocab[("item_id", i)] += c
            self._vocab[("user_id", int(events.user_id[0]))] += 1
            self._count_side(batch)
            for ex in self._encoder.encode(batch):
                yield beam.pvalue.TaggedOutput(SEQUENCES, ex)
            return
        splitter = SplitAssigner(self._cfg.split, *(cutoffs or (None, None)))
        for split, batch in build_ctr_samples(events, s, splitter, self._side, self._stats):
            self._count_vocab(batch)
            for ex in self._encoder.encode(batch):
                yield beam.pvalue.TaggedOutput(SPLITS[split], ex)

    def _count_side(self, batch: Any) -> None:
        s = self._cfg.samples
        for name in [f"user_{f}" for f in s.user_features] + [f"item_{f}" for f in s.item_features]:
            for v in batch.column(name).flatten().to_numpy().tolist():
                self._vocab[(name, v)] += 1

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
def BuildSamples(pcoll: beam.PCollection, cfg: Config) -> dict[str, beam.PCollection]:  # noqa: N802
    """Files `(index, path)` -> dict of PCollections: one per split (serialized
    tf.Examples), `dead_letter` (dicts), `vocab` ((name, id), count) and `stats`."""
    parsed = pcoll | "ReadParse" >> beam.ParDo(ReadParseFn(cfg)).with_outputs(
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
        *SPLITS, SEQUENCES, VOCAB, STATS
    )
    vocab = (
        built[VOCAB]
        | "FlattenVocab" >> beam.FlatMap(lambda items: items)
        | "SumVocab" >> beam.CombinePerKey(sum)
    )
    stats = built[STATS] | "MergeStats" >> beam.CombineGlobally(_merge_stats)
    out = {s: built[s] for s in (*SPLITS, SEQUENCES)}
    out.update({DEAD_LETTER: parsed[DEAD_LETTER], VOCAB: vocab, STATS: stats})
    if residual is not None:
        out[KCORE_RESIDUAL] = residual
    return out


def _stats_to_dict(stats: UserStats, dead: int, vocab_sizes: list[tuple[str, int]],
                   sequential: bool = False, kcore_residual: list[int] | None = None):
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
        )
        | "StatsJson" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
        | "WriteStats" >> beam.io.WriteToText(
            FileSystems.join(out, "_stats"), file_name_suffix=".json", num_shards=1,
            shard_name_template="",
        )
    )
