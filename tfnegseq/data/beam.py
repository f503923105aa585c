"""Beam PTransforms of the sample-building job (entry point: `beam_jobs/build_samples.py`).

    files -> ReadParse (chunked, dead letters) -> rules -> (user, EventChunk)
          -> GroupByKey(user) -> [KCoreFilter] -> BuildSamples (per user, batched)
          -> tf.Example (tfx-bsl) -> gzip TFRecord shards per split
    side tables (ReadSideTable, dead letters) -> side inputs of BuildSamples
    item catalogue (ItemCatalogue, for samples.negatives and samples.negative_history
        "catalogue") -> a side input of BuildSamples
    plus vocabularies with counts over the training split (see `BuildSamplesFn`,
    `WriteVocabularies`), dead letters (JSONL) and stats; the driver turns the stats
    and the counters into `manifest.json` and writes `schema.pbtxt`.

Every DoFn is picklable (configs are dataclasses), declares its element types and does
its expensive set-up in `setup()`, so the job runs unchanged on DirectRunner
(in-process or multi_processing) and on Dataflow. Per-user logic lives in
`tfnegseq.data.samples` and is tested there.

Counters (namespace `tfnegseq`, shown in the Dataflow UI and printed by the driver):
`files_read`, `events_read`, `users_built`, `samples_<split>`, `side_rows_<user|item>`
and `dead_letters_<reason>` (`reason_key`). Long local runs log a `progress:` line at
most every `PROGRESS_SECONDS` per DoFn instance.
"""

import heapq
import itertools
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.typehints import with_input_types, with_output_types

from tfnegseq.config import Config, SplitConfig
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
from tfnegseq.schema import PAD_ID

MAIN = "main"
DEAD_LETTER = "dead_letter"
VOCAB = "vocab"
STATS = "stats"
SEQUENCES = "sequences"  # the sequential task's one-example-per-user output
KCORE_RESIDUAL = "kcore_residual"
CHUNKS = "chunks"  # ReadEvents' per-chunk (user, EventChunk), before grouping
TRAIN = SPLITS.index("train")
NAMESPACE = "tfnegseq"  # of every counter
PROGRESS_SECONDS = 60.0  # at most one progress line per DoFn instance this often
VOCAB_ROWS_PER_SHARD = 1_000_000  # ids sorted in memory at once when writing a vocabulary
VOCAB_SHARD_DIR = "_vocab_shards"  # sorted vocabulary shards, merged into vocab/<name>.tsv

log = logging.getLogger("tfnegseq.beam")

UserEvents = tuple[int, EventChunk]
VocabCount = tuple[tuple[str, int], int]  # ((vocabulary, id), count)


def _global(value: Any) -> Any:
    return GlobalWindows.windowed_value(value)


def count(name: str, n: int = 1) -> None:
    """Adds `n` to the counter `name` of the job's namespace (nothing when n is 0)."""
    if n:
        Metrics.counter(NAMESPACE, name).inc(int(n))


_COLUMN_REASON = re.compile(r"([A-Za-z_][A-Za-z0-9_]*): ")


def reason_key(dead: dict[str, Any]) -> str:
    """A short, bounded name for a dead letter's reason (its counter is
    `dead_letters_<key>`): encoding, blank_line, field_count, duplicate_id,
    unparsable_row, invalid_json, bad_<column>, user_failed or other."""
    from tfnegseq.data.lines import ENCODING_ERROR
    from tfnegseq.data.sources import DUPLICATE_ID

    if "user_id" in dead and "file" not in dead:
        return "user_failed"
    reason = str(dead.get("reason", ""))
    fixed = {ENCODING_ERROR: "encoding", "blank line": "blank_line", DUPLICATE_ID: "duplicate_id",
             "not a JSON object": "invalid_json"}
    if reason in fixed:
        return fixed[reason]
    if re.fullmatch(r"expected \d+ fields, found \d+", reason):
        return "field_count"
    if reason.startswith("unparsable row"):
        return "unparsable_row"
    if reason.startswith("invalid JSON"):
        return "invalid_json"
    m = _COLUMN_REASON.match(reason)
    return f"bad_{m.group(1)}" if m else "other"


class Progress:
    """Counts work done and logs `progress: <total> <what>` at most every `every_s`
    seconds (so long local runs show life, and short ones, tests included, stay quiet).

    Args:
        what: str. What is counted, e.g. "events read".
        every_s: float. Seconds between two lines. Defaults to `PROGRESS_SECONDS`.
        clock: callable. Monotonic seconds. Defaults to `time.monotonic`.
    """

    def __init__(self, what: str, every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.every_s = PROGRESS_SECONDS if every_s is None else every_s
        self.total = 0
        self._clock = clock
        self._last = clock()

    def add(self, n: int) -> None:
        self.total += int(n)
        now = self._clock()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("progress: %d %s", self.total, self.what)


# --------------------------------------------------------------------- read and parse


@with_input_types(tuple[int, str])
@with_output_types(UserEvents)
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
        self._progress = Progress("events read")

    def process(self, spec: tuple[int, str]) -> Iterator[Any]:
        from tfnegseq.data.rules import apply_rules

        index, path = spec
        for chunk, dead in self._source.read_chunks(index, path, self._chunk_rows):
            for d in dead:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, d.to_dict())
            count("events_read", len(chunk))
            self._progress.add(len(chunk))
            if len(chunk):
                chunk = apply_rules(chunk, self._cfg.rules)
                yield from chunk.split_by_user()
        count("files_read")


def _merge_chunks(kv: tuple[int, Iterable[EventChunk]]) -> tuple[int, EventChunk]:
    user, chunks = kv
    return user, EventChunk.concat(list(chunks))


@beam.ptransform_fn
@with_input_types(tuple[int, str])
@with_output_types(Any)  # {MAIN: (user, EventChunk) per user, DEAD_LETTER: dicts}
def ReadEvents(pcoll: beam.PCollection, cfg: Config, min_timestamp: int | None = None,  # noqa: N802
               max_timestamp: int | None = None) -> dict[str, beam.PCollection]:
    """Files `(index, path)` -> {MAIN: one (user, EventChunk) per user with all of the
    user's events, DEAD_LETTER: the refused rows, CHUNKS: the (user, EventChunk) of each
    chunk before grouping} (see `ReadParseFn`)."""
    read = ReadParseFn(cfg, min_timestamp=min_timestamp, max_timestamp=max_timestamp)
    parsed = pcoll | "ReadParse" >> beam.ParDo(read).with_outputs(DEAD_LETTER, main=MAIN)
    users = (
        parsed[MAIN]
        | "GroupByUser" >> beam.GroupByKey()
        | "MergeUserChunks" >> beam.Map(_merge_chunks)
    )
    return {MAIN: users, DEAD_LETTER: parsed[DEAD_LETTER], CHUNKS: parsed[MAIN]}


# ------------------------------------------------------------------------ side tables


@with_input_types(str)
@with_output_types(tuple[int, dict[str, int]])
class ReadSideTableFn(beam.DoFn):
    """"user" / "item" -> (id, {feature: code}) for every id of that side table (its
    first row), plus dead letters: corrupt rows (file, line, raw, reason) and later rows
    of an id (reason "duplicate id"). See `tfnegseq.data.sources.SideTable`."""

    def __init__(self, cfg: Config):
        self._cfg = cfg

    def setup(self) -> None:
        from tfnegseq.data.sources import make_source

        self._source = make_source(self._cfg.source)

    def process(self, what: str) -> Iterator[Any]:
        s = self._cfg.samples
        if what == "user":
            table = self._source.user_table(list(s.user_features))
        else:
            table = self._source.item_table(list(s.item_features))
        for d in table.dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, d.to_dict())
        rows, duplicates = table.first_rows()
        for d in duplicates:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, d.to_dict())
        count(f"side_rows_{what}", len(rows))
        yield from rows.items()


@beam.ptransform_fn
@with_input_types(Any)  # the pipeline (PBegin)
@with_output_types(Any)  # {MAIN: (id, {feature: code}), DEAD_LETTER: dicts}
def ReadSideTable(pbegin: beam.pvalue.PBegin, cfg: Config, what: str  # noqa: N802
                  ) -> dict[str, beam.PCollection]:
    """The user ("user") or item ("item") side table of `cfg.samples`' features:
    {MAIN: (id, {feature: code}) once per id, DEAD_LETTER: corrupt and duplicate rows}.
    `BuildSamplesFn` takes MAIN as a side input (`beam.pvalue.AsDict`)."""
    out = (
        pbegin
        | "Which" >> beam.Create([what])
        | "ReadTable" >> beam.ParDo(ReadSideTableFn(cfg)).with_outputs(DEAD_LETTER, main=MAIN)
    )
    return {MAIN: out[MAIN], DEAD_LETTER: out[DEAD_LETTER]}


# --------------------------------------------------------------------------- k-core


@with_input_types(UserEvents, Any)  # the element, the item counts (a side input)
@with_output_types(UserEvents)
class KCoreRoundFn(beam.DoFn):
    """One round of iterative k-core filtering over user-grouped events: drops events of
    items with fewer than k events (counts from the previous round), then users with
    fewer than k events."""

    def __init__(self, k: int):
        self._k = k

    def process(self, kv: UserEvents, item_counts: Any) -> Iterator[UserEvents]:
        user, ev = kv
        counts = np.fromiter((item_counts.get(int(i), 0) for i in ev.item_id), np.int64, len(ev))
        ev = ev.take(counts >= self._k)
        if len(ev) >= self._k:
            yield user, ev


@with_input_types(UserEvents, Any)  # the element, the item counts (a side input)
@with_output_types(int)
class KCoreResidualFn(beam.DoFn):
    """Events that one more k-core round would still remove (0 when converged)."""

    def __init__(self, k: int):
        self._k = k

    def process(self, kv: UserEvents, item_counts: Any) -> Iterator[int]:
        _, ev = kv
        counts = np.fromiter((item_counts.get(int(i), 0) for i in ev.item_id), np.int64, len(ev))
        kept = int((counts >= self._k).sum())
        yield len(ev) if kept < self._k else len(ev) - kept


def _item_counts(kv: UserEvents) -> Iterator[tuple[int, int]]:
    ids, counts = np.unique(kv[1].item_id, return_counts=True)
    return zip(ids.tolist(), counts.tolist(), strict=True)


@beam.ptransform_fn
@with_input_types(UserEvents)
@with_output_types(Any)  # {MAIN: (user, EventChunk), KCORE_RESIDUAL: int}
def KCoreFilter(users: beam.PCollection, k: int, rounds: int  # noqa: N802
                ) -> dict[str, beam.PCollection]:
    """`rounds` rounds of k-core filtering (`KCoreRoundFn`): {MAIN: the kept users,
    KCORE_RESIDUAL: one int, the events one more round would still remove}."""
    for r in range(rounds):
        counts = (
            users
            | f"ItemCounts{r}" >> beam.FlatMap(_item_counts)
            | f"SumItemCounts{r}" >> beam.CombinePerKey(sum)
        )
        users = users | f"KCore{r}" >> beam.ParDo(KCoreRoundFn(k), beam.pvalue.AsDict(counts))
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
    return {MAIN: users, KCORE_RESIDUAL: residual}


def _chunk_span(kv: UserEvents) -> tuple[int, int]:
    return int(kv[1].timestamp.min()), int(kv[1].timestamp.max())


def _minmax(pairs: Iterable[tuple[int, int]]) -> tuple[int, int] | None:
    pairs = list(pairs)
    if not pairs:
        return None
    return min(p[0] for p in pairs), max(p[1] for p in pairs)


@beam.ptransform_fn
@with_input_types(UserEvents)
@with_output_types(tuple[int, int])
def TemporalCutoffs(chunks: beam.PCollection, split: SplitConfig) -> beam.PCollection:  # noqa: N802
    """(user, EventChunk) -> one (valid_start, test_start) in ms (`SplitAssigner
    .temporal_cutoffs` of the events' global time span; (0, 0) without events)."""
    return (
        chunks
        | "ChunkSpan" >> beam.Map(_chunk_span)
        | "GlobalSpan" >> beam.CombineGlobally(_minmax)
        | "Cutoffs" >> beam.Map(
            lambda mm: SplitAssigner.temporal_cutoffs(split, *mm) if mm else (0, 0)
        ).with_output_types(tuple[int, int])
    )


@with_input_types(Any)  # np.ndarray of ids
@with_output_types(Any)  # one sorted np.ndarray
class UnionIdsFn(beam.CombineFn):
    """Sorted unique int64 ids of many id arrays. The accumulator is a list of arrays,
    compacted (one `np.unique`) whenever it holds twice as many ids as its last compact
    form plus `COMPACT_IDS`, so memory stays near the number of distinct ids."""

    COMPACT_IDS = 1_000_000

    def create_accumulator(self) -> list[np.ndarray]:
        return []

    @classmethod
    def _compact(cls, acc: list[np.ndarray], force: bool = False) -> list[np.ndarray]:
        total = sum(len(a) for a in acc)
        if force or total > 2 * len(acc[0]) + cls.COMPACT_IDS:
            return [np.unique(np.concatenate(acc).astype(np.int64))]
        return acc

    def add_input(self, acc: list[np.ndarray], ids: np.ndarray) -> list[np.ndarray]:
        if not acc:
            return [np.unique(np.asarray(ids, np.int64))]
        return self._compact([*acc, np.asarray(ids, np.int64)])

    def merge_accumulators(self, accs: Iterable[list[np.ndarray]]) -> list[np.ndarray]:
        arrays = [a for acc in accs for a in acc]
        return self._compact(arrays, force=True) if arrays else []

    def extract_output(self, acc: list[np.ndarray]) -> np.ndarray:
        return self._compact(acc, force=True)[0] if acc else np.zeros(0, np.int64)


def _chunk_items(kv: UserEvents) -> np.ndarray:
    return np.unique(kv[1].item_id)


@beam.ptransform_fn
@with_input_types(UserEvents)
@with_output_types(Any)  # one np.ndarray
def ItemCatalogue(chunks: beam.PCollection) -> beam.PCollection:  # noqa: N802
    """(user, EventChunk) -> one sorted array of every distinct item id (int64): the
    catalogue `samples.negatives` and `samples.negative_history: catalogue` draw from
    (a side input of `BuildSamplesFn`)."""
    return (
        chunks
        | "ChunkItems" >> beam.Map(_chunk_items)
        | "UnionItems" >> beam.CombineGlobally(UnionIdsFn())
    )


# ---------------------------------------------------------------------- build samples


@with_input_types(UserEvents)
@with_output_types(bytes)
class BuildSamplesFn(beam.DoFn):
    """(user, EventChunk) -> serialized tf.Examples tagged by split, plus vocabulary
    counts and stats aggregated per bundle (few elements, not one per event).

    Side inputs (keyword): `cutoffs` (the temporal split's (valid_start, test_start)),
    `users` and `items` (id -> {feature: code}, `ReadSideTable`'s main outputs as
    `beam.pvalue.AsDict`); without them no user / item table is used; `catalogue`
    (`ItemCatalogue`, for `samples.negatives` and `samples.negative_history:
    catalogue`). Nothing is read from the raw files here.

    A user whose sample building raises becomes a dead letter (`user_id`, `events`,
    `samples_written`, `reason`) and the job goes on. Samples are streamed, a batch at
    a time, so the batches written before the failure stay written (they are complete,
    leakage-free samples) and `samples_written` says how many; stats and vocabularies
    count exactly the written ones.

    Vocabularies count the training split only, so valid / test frequencies never
    decide `min_count` / `max_size` and ids first seen there map to OOV buckets: CTR
    counts the train split's samples and, once per event, the events that appear only
    in their histories (`samples.ctr_vocab_counts` with `seen`), the sequential task
    each user's training events, `seq_*[:valid_index]` (`samples.sequential_vocab_counts`).
    """

    def __init__(self, cfg: Config):
        self._cfg = cfg

    def setup(self) -> None:
        from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

        self._encoder = RecordBatchToExamplesEncoder()
        self._side_key: tuple[Any, Any] | None = None
        self._side = SideTables()
        self._catalogue_key: Any = None
        self._catalogue: np.ndarray | None = None
        self._progress = Progress("users built")

    def start_bundle(self) -> None:
        self._stats = UserStats()
        self._vocab: Counter[tuple[str, int]] = Counter()

    def _side_tables(self, users: Any, items: Any) -> SideTables:
        """The side tables, rebuilt only when the side-input views change."""
        if self._side_key is None or self._side_key[0] is not users \
                or self._side_key[1] is not items:
            self._side_key = (users, items)
            self._side = SideTables(users=users or {}, items=items or {},
                                    item_names=tuple(self._cfg.samples.item_features))
        return self._side

    def _checked_catalogue(self, catalogue: Any) -> np.ndarray | None:
        """The catalogue side input, checked (sorted, unique) once per view."""
        from tfnegseq.data.negatives import check_catalogue

        if catalogue is None:
            return None
        if self._catalogue_key is not catalogue:
            self._catalogue = check_catalogue(catalogue)
            self._catalogue_key = catalogue
        return self._catalogue

    def process(self, kv: UserEvents, cutoffs: Any = None, users: Any = None,
                items: Any = None, catalogue: Any = None) -> Iterator[Any]:
        user, events = kv
        side = self._side_tables(users, items)
        written = 0
        try:
            catalogue = self._checked_catalogue(catalogue)
            for tag, examples in self._build(events, cutoffs, side, catalogue):
                for ex in examples:
                    yield beam.pvalue.TaggedOutput(tag, ex)
                written += len(examples)
                count(f"samples_{tag}", len(examples))
        except Exception as e:  # noqa: BLE001 - one user's failure never fails the job
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {
                "user_id": int(user),
                "events": len(events),
                "samples_written": written,
                "reason": f"{type(e).__name__}: {e}",
            })
            return
        count("users_built")
        self._progress.add(1)

    def _build(self, events: EventChunk, cutoffs: tuple[int, int] | None,
               side: SideTables, catalogue: np.ndarray | None = None
               ) -> Iterator[tuple[str, list[bytes]]]:
        """(output tag, serialized examples) per batch of one user. A batch's stats and
        vocabulary counts are added only once it is fully encoded, just before it is
        handed out, so they count exactly the examples written."""
        s = self._cfg.samples
        if s.task == "sequential":
            stats = UserStats()
            batch = build_sequential_sample(events, s, side, stats)
            vocab = Counter() if batch is None else sequential_vocab_counts(
                batch, events, s, side)
            examples = [] if batch is None else self._encoder.encode(batch)
            self._stats = self._stats.merge(stats)
            self._vocab.update(vocab)
            if examples:
                yield SEQUENCES, examples
            return
        splitter = SplitAssigner(self._cfg.split, *(cutoffs or (None, None)))
        seen = np.zeros(len(events) + 1, dtype=bool)  # orders counted (ctr_vocab_counts)
        for split, batch in build_ctr_samples(events, s, splitter, side, catalogue=catalogue):
            examples = self._encoder.encode(batch)
            vocab = ctr_vocab_counts(batch, s, seen) if split == TRAIN else Counter()
            count_ctr_batch(self._stats, split, batch)
            self._vocab.update(vocab)
            yield SPLITS[split], examples

    def finish_bundle(self) -> Iterator[Any]:
        if self._vocab:
            items = [((name, int(i)), int(c)) for (name, i), c in self._vocab.items()]
            yield beam.pvalue.TaggedOutput(VOCAB, _global(items))
        yield beam.pvalue.TaggedOutput(STATS, _global(self._stats))


def _merge_stats(stats: Iterable[UserStats]) -> UserStats:
    out = UserStats()
    for s in stats:
        out = out.merge(s)
    return out


def _count_dead_letter(dead: dict[str, Any]) -> dict[str, Any]:
    count(f"dead_letters_{reason_key(dead)}")
    return dead


@beam.ptransform_fn
@with_input_types(dict[str, Any])
@with_output_types(dict[str, Any])
def CountDeadLetters(dead: beam.PCollection) -> beam.PCollection:  # noqa: N802
    """Passes dead letters through, counting them per reason (`dead_letters_<key>`)."""
    return dead | "CountByReason" >> beam.Map(_count_dead_letter)


@beam.ptransform_fn
@with_input_types(list[VocabCount])
@with_output_types(VocabCount)
def SumVocabCounts(bundles: beam.PCollection) -> beam.PCollection:  # noqa: N802
    """Per-bundle lists of ((vocabulary, id), count) -> one ((vocabulary, id), total) per
    id, summed by a combiner (no id list is gathered on one worker)."""
    return (
        bundles
        | "FlattenVocab" >> beam.FlatMap(lambda items: items).with_output_types(VocabCount)
        | "SumVocab" >> beam.CombinePerKey(sum)
    )


@beam.ptransform_fn
@with_input_types(tuple[int, str])
@with_output_types(Any)  # {split / SEQUENCES: bytes, DEAD_LETTER: dict, VOCAB, STATS, ...}
def BuildSamples(  # noqa: N802
    pcoll: beam.PCollection, cfg: Config, min_timestamp: int | None = None,
    max_timestamp: int | None = None,
) -> dict[str, beam.PCollection]:
    """Files `(index, path)` -> dict of PCollections: one per split (serialized
    tf.Examples), `dead_letter` (dicts: the rows `ReadParseFn` and `ReadSideTable`
    refused, with file, line, raw and reason, and the users `BuildSamplesFn` failed on,
    with user_id and reason; counted per reason), `vocab` ((name, id), count), `stats`
    and, for k-core filtering, `kcore_residual`. `min_timestamp` / `max_timestamp`: see
    `ReadParseFn`."""
    read = pcoll | "ReadEvents" >> ReadEvents(cfg, min_timestamp, max_timestamp)
    users = read[MAIN]
    dead = [read[DEAD_LETTER]]
    k = cfg.samples.min_core if cfg.samples.task == "sequential" else 0
    residual = None
    if k > 1:
        kcore = users | "KCoreFilter" >> KCoreFilter(k, cfg.samples.min_core_rounds)
        users, residual = kcore[MAIN], kcore[KCORE_RESIDUAL]
    side_inputs: dict[str, Any] = {}
    if cfg.samples.task == "ctr" and cfg.split.kind == "temporal":
        cutoffs = read[CHUNKS] | "TemporalCutoffs" >> TemporalCutoffs(cfg.split)
        side_inputs["cutoffs"] = beam.pvalue.AsSingleton(cutoffs)
    if cfg.samples.task == "ctr" and (cfg.samples.negatives.kind != "none"
                                      or cfg.samples.negative_history == "catalogue"):
        catalogue = read[CHUNKS] | "ItemCatalogue" >> ItemCatalogue()
        side_inputs["catalogue"] = beam.pvalue.AsSingleton(catalogue)
    for what, names in (("user", cfg.samples.user_features), ("item", cfg.samples.item_features)):
        if names:
            table = pcoll.pipeline | f"Read{what.title()}Table" >> ReadSideTable(cfg, what)
            side_inputs[f"{what}s"] = beam.pvalue.AsDict(table[MAIN])
            dead.append(table[DEAD_LETTER])
    built = users | "BuildSamples" >> beam.ParDo(BuildSamplesFn(cfg), **side_inputs).with_outputs(
        *SPLITS, SEQUENCES, VOCAB, STATS, DEAD_LETTER
    )
    dead.append(built[DEAD_LETTER])
    dead_letters = (
        tuple(dead)
        | "FlattenDeadLetters" >> beam.Flatten()
        | "CountDeadLetters" >> CountDeadLetters()
    )
    vocab = built[VOCAB] | "SumVocabCounts" >> SumVocabCounts()
    stats = built[STATS] | "MergeStats" >> beam.CombineGlobally(_merge_stats)
    out = {s: built[s] for s in (*SPLITS, SEQUENCES)}
    out.update({DEAD_LETTER: dead_letters, VOCAB: vocab, STATS: stats})
    if residual is not None:
        out[KCORE_RESIDUAL] = residual
    return out


# ----------------------------------------------------------------------- vocabularies


def _vocab_order(pair: tuple[int, int]) -> tuple[int, int]:
    """Sort key of an (id, count) row: count desc, then id asc."""
    return -pair[1], pair[0]


def _vocab_rank(pair: tuple[int, int]) -> tuple[int, int]:
    """`Top` key of an (id, count) row: the largest is the most frequent, smallest id."""
    return pair[1], -pair[0]


def _write_rows(path: str, rows: Iterable[tuple[int, int]], block: int = 65_536) -> int:
    """Writes `id<TAB>count` lines, a block at a time; returns how many."""
    n = 0
    with FileSystems.create(path) as f:
        it = iter(rows)
        while True:
            chunk = list(itertools.islice(it, block))
            if not chunk:
                return n
            f.write("".join(f"{i}\t{c}\n" for i, c in chunk).encode())
            n += len(chunk)


def _read_rows(path: str) -> Iterator[tuple[int, int]]:
    with FileSystems.open(path) as f:
        for line in f:
            i, c = line.decode().rstrip("\n").split("\t")
            yield int(i), int(c)


@with_input_types(tuple[str, Iterable[tuple[int, int]]])
@with_output_types(tuple[str, int])
class WriteVocabFn(beam.DoFn):
    """(vocab name, [(id, count)]) -> `<out>/vocab/<name>.tsv`, sorted by count desc,
    then id; one `id<TAB>count` line each. For lists a combiner bounded (`Top`)."""

    def __init__(self, out_dir: str):
        self._out = out_dir

    def process(self, kv: tuple[str, Iterable[tuple[int, int]]]) -> Iterator[tuple[str, int]]:
        name, pairs = kv
        rows = sorted(pairs, key=_vocab_order)
        yield name, _write_rows(FileSystems.join(self._out, "vocab", f"{name}.tsv"), rows)


@with_input_types(tuple[tuple[str, int], Iterable[tuple[int, int]]])
@with_output_types(tuple[str, tuple[str, int]])
class WriteVocabShardFn(beam.DoFn):
    """((vocab name, shard), [(id, count)]) -> a sorted shard file under
    `<out>/_vocab_shards/`; yields (name, (shard path, rows))."""

    def __init__(self, out_dir: str):
        self._out = out_dir

    def process(self, kv: tuple[tuple[str, int], Iterable[tuple[int, int]]]
                ) -> Iterator[tuple[str, tuple[str, int]]]:
        (name, shard), pairs = kv
        path = FileSystems.join(self._out, VOCAB_SHARD_DIR, f"{name}-{shard:05d}.tsv")
        yield name, (path, _write_rows(path, sorted(pairs, key=_vocab_order)))


@with_input_types(tuple[str, Iterable[tuple[str, int]]])
@with_output_types(tuple[str, int])
class MergeVocabShardsFn(beam.DoFn):
    """(vocab name, [(shard path, rows)]) -> `<out>/vocab/<name>.tsv`: a streaming k-way
    merge of the sorted shards (memory: one line per shard); yields (name, rows). The
    shards are left for the driver to remove (a retried merge finds them)."""

    def __init__(self, out_dir: str):
        self._out = out_dir

    def process(self, kv: tuple[str, Iterable[tuple[str, int]]]) -> Iterator[tuple[str, int]]:
        name, shards = kv
        paths = sorted(p for p, _ in shards)
        merged = heapq.merge(*(_read_rows(p) for p in paths), key=_vocab_order)
        yield name, _write_rows(FileSystems.join(self._out, "vocab", f"{name}.tsv"), merged)


def _shard_key(row: tuple[str, tuple[int, int]], sizes: dict[str, int],
               rows_per_shard: int) -> tuple[tuple[str, int], tuple[int, int]]:
    name, pair = row
    shards = max(1, -(-sizes[name] // rows_per_shard))
    return (name, pair[0] % shards), pair


@beam.ptransform_fn
@with_input_types(VocabCount)
@with_output_types(tuple[str, int])
def WriteVocabularies(  # noqa: N802
    counts: beam.PCollection, out_dir: str, min_count: int = 1, max_size: int = 0,
    rows_per_shard: int = VOCAB_ROWS_PER_SHARD,
) -> beam.PCollection:
    """((vocabulary, id), count) -> `<out_dir>/vocab/<vocabulary>.tsv` files of
    `id<TAB>count` lines, count desc then id asc (what `tfnegseq.data.vocab` reads);
    yields (vocabulary, rows written).

    Ids counted fewer than `min_count` times are dropped. `max_size` > 0 keeps the
    `max_size` most frequent ids other than padding through a combiner (`Top.PerKey`:
    each worker holds at most `max_size` rows). `max_size` 0 keeps every id: each
    vocabulary is split by id into shards of about `rows_per_shard` rows, each shard is
    sorted on its own, and one streaming merge writes the file, so no vocabulary is
    ever one list on one worker.
    """
    rows = (
        counts
        | "VocabMinCount" >> beam.Filter(lambda kv, m: kv[1] >= m, min_count)
        | "ByVocab" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1]))).with_output_types(
            tuple[str, tuple[int, int]])
    )
    if max_size:
        return (
            rows
            | "DropPadding" >> beam.Filter(lambda kv: kv[1][0] != PAD_ID)
            | "TopVocab" >> beam.combiners.Top.PerKey(max_size, key=_vocab_rank)
            | "WriteTopVocab" >> beam.ParDo(WriteVocabFn(out_dir))
        )
    sizes = rows | "VocabSizes" >> beam.combiners.Count.PerKey()
    return (
        rows
        | "KeyByShard" >> beam.Map(_shard_key, beam.pvalue.AsDict(sizes), rows_per_shard)
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteVocabShardFn(out_dir))
        | "GroupVocabShards" >> beam.GroupByKey()
        | "MergeShards" >> beam.ParDo(MergeVocabShardsFn(out_dir))
    )


# ---------------------------------------------------------------------------- outputs


def _stats_to_dict(stats: UserStats, dead: int, vocab_sizes: list[tuple[str, int]],
                   sequential: bool = False, kcore_residual: list[int] | None = None,
                   dead_users: int = 0) -> dict[str, Any]:
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
        "life_len_sum": stats.life_len_sum,
        "life_len_max": stats.life_len_max,
        "excluded": stats.excluded,
        "dead_letters": dead,
        "dead_letter_users": dead_users,
        "vocab_sizes": dict(vocab_sizes),
        "total": total,
    }


@beam.ptransform_fn
@with_input_types(Any)  # the dict `BuildSamples` returns
@with_output_types(str)
def WriteOutputs(outputs: dict[str, beam.PCollection], cfg: Config) -> beam.PCollection:  # noqa: N802
    """Writes shards, dead letters, vocabularies and `_stats.json` under output.dir.

    Vocabularies: `WriteVocabularies` with `output.vocab_min_count` (default 1) and
    `output.vocab_max_size` (default 0: every id)."""
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
    sizes = outputs[VOCAB] | "WriteVocab" >> WriteVocabularies(
        out, min_count=cfg.output.vocab_min_count,
        max_size=cfg.output.vocab_max_size,
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
