"""The Beam DoFns of `tfnegseq.data.beam` on TestPipelines: main and dead-letter outputs."""

import json
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.helpers_data import HEADER, T0, kuairec_row
from tfnegseq.config import config_from_dict
from tfnegseq.data import job
from tfnegseq.data.beam import (
    DEAD_LETTER,
    MAIN,
    SEQUENCES,
    STATS,
    VOCAB,
    BuildSamples,
    BuildSamplesFn,
    ReadParseFn,
)
from tfnegseq.data.events import EventChunk
from tfnegseq.data.samples import SPLITS


def pipeline():
    """A TestPipeline on the job's in-process runner (no Prism download)."""
    options = PipelineOptions([])
    return test_pipeline.TestPipeline(runner=job.direct_runner(options), options=options)


def make_cfg(log_dir, **split):
    return config_from_dict({
        "source": {"kind": "kuairec", "path": str(log_dir)},
        "samples": {"max_history": 5},
        "model": {"sequence_length": 10},
        "split": split or {"kind": "user", "valid_fraction": 0.0, "test_fraction": 0.0},
    })


def write_bytes(log_dir, lines):
    """`big_matrix.csv` from lines of bytes (header first); returns its path."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, "big_matrix.csv")
    with open(path, "wb") as f:
        f.write(b"\n".join([HEADER.encode()] + lines) + b"\n")
    return path


def row(user, item, seconds):
    return kuairec_row(user, item, seconds, 2.5).encode()


def events_of(kv):
    """(user, EventChunk) -> its (user, item, timestamp ms) triples."""
    user, ev = kv
    return [(user, int(i), int(t)) for i, t in zip(ev.item_id, ev.timestamp, strict=True)]


# ------------------------------------------------------------------ read and parse


def test_invalid_utf8_line_is_a_dead_letter(tmp_path):
    """One byte that is not UTF-8 makes that line a dead letter (reason "encoding"); the
    other lines, before and after it in the same chunk, are events."""
    bad = row(2, 5, T0 + 3).replace(b",5,", b",5\xff,")
    path = write_bytes(tmp_path / "log", [row(1, 4, T0 + 1), row(1, 6, T0 + 2), bad,
                                          row(2, 7, T0 + 4)])
    raw = kuairec_row(2, 5, T0 + 3, 2.5).replace(",5,", ",5\\xff,")
    with pipeline() as p:
        out = (p | beam.Create([(0, path)])
               | beam.ParDo(ReadParseFn(make_cfg(tmp_path / "log"))).with_outputs(
                   DEAD_LETTER, main=MAIN))
        ms = int(T0 * 1000)
        assert_that(out[MAIN] | beam.FlatMap(events_of),
                    equal_to([(1, 4, ms + 1000), (1, 6, ms + 2000), (2, 7, ms + 4000)]),
                    label="check_main")
        assert_that(out[DEAD_LETTER],
                    equal_to([{"file": path, "line": 4, "raw": raw, "reason": "encoding"}]),
                    label="check_dead_letter")


def test_timestamps_outside_the_plausible_range_are_dead_letters(tmp_path):
    """Bounds [2017-07-14T02:40Z, 2023-11-14T22:13:20Z]: a 1969, a 2000 and a 2100
    timestamp are dead letters with the reason; the 2020 ones are events."""
    rows = [row(1, 4, T0), row(1, 5, -5.0), row(2, 6, 946684800.0), row(2, 7, 4102444800.0),
            row(2, 8, T0 + 1)]
    path = write_bytes(tmp_path / "log", rows)
    fn = ReadParseFn(make_cfg(tmp_path / "log"), min_timestamp=1_500_000_000_000,
                     max_timestamp=1_700_000_000_000)
    span = "[2017-07-14T02:40:00.000Z, 2023-11-14T22:13:20.000Z]"
    want_dead = [
        {"file": path, "line": n, "raw": rows[n - 2].decode(),
         "reason": f"timestamp: {when} is outside the plausible range {span}"}
        for n, when in ((3, "1969-12-31T23:59:55.000Z"), (4, "2000-01-01T00:00:00.000Z"),
                        (5, "2100-01-01T00:00:00.000Z"))
    ]
    with pipeline() as p:
        out = p | beam.Create([(0, path)]) | beam.ParDo(fn).with_outputs(DEAD_LETTER, main=MAIN)
        ms = int(T0 * 1000)
        assert_that(out[MAIN] | beam.FlatMap(events_of),
                    equal_to([(1, 4, ms), (2, 8, ms + 1000)]), label="check_main")
        assert_that(out[DEAD_LETTER], equal_to(want_dead), label="check_dead_letter")


def test_default_bounds_keep_a_far_future_timestamp_out_of_the_temporal_split(tmp_path):
    """100 events at T0 + 0, 10, ..., 990 s and one in 2100. With the default bounds
    (1970-01-01 .. job start + 1 day) the 2100 event is a dead letter and the 10% / 10%
    cut-offs come from the real span: 80 train, 10 valid, 10 test."""
    rows = [row(i % 4, i, T0 + 10 * i) for i in range(100)]
    path = write_bytes(tmp_path / "log", rows[:50] + [row(3, 999, 4102444800.0)] + rows[50:])
    cfg = make_cfg(tmp_path / "log", kind="temporal", valid_fraction=0.1, test_fraction=0.1)
    with pipeline() as p:
        out = p | beam.Create([(0, path)]) | BuildSamples(cfg)
        for split, n in zip(SPLITS, (80, 10, 10), strict=True):
            assert_that(out[split] | f"Count_{split}" >> beam.combiners.Count.Globally(),
                        equal_to([n]), label=f"check_{split}")
        assert_that(out[DEAD_LETTER] | beam.Map(lambda d: (d["line"], d["reason"].split(" is")[0])),
                    equal_to([(52, "timestamp: 2100-01-01T00:00:00.000Z")]),
                    label="check_dead_letter")


# ------------------------------------------------------------------ build samples


def labelled_events(user, items, labelled=True):
    n = len(items)
    return EventChunk(
        user_id=np.full(n, user), item_id=items, timestamp=(T0 + np.arange(n)) * 1000,
        value=np.ones(n), file_index=np.zeros(n), line=np.arange(1, n + 1),
        label=np.ones(n) if labelled else None, polarity=np.ones(n) if labelled else None,
    )


def test_a_user_whose_sample_building_raises_is_a_dead_letter(tmp_path):
    """User 2's events lack labels (building raises): a dead letter with the user id and
    the reason; users 1 and 3 still get their samples, counted in the stats."""
    users = [(1, labelled_events(1, [10, 11, 12])), (2, labelled_events(2, [20, 21], False)),
             (3, labelled_events(3, [30]))]
    with pipeline() as p:
        out = p | beam.Create(users) | beam.ParDo(BuildSamplesFn(make_cfg(tmp_path))).with_outputs(
            *SPLITS, SEQUENCES, VOCAB, STATS, DEAD_LETTER)
        items = out["train"] | beam.Map(
            lambda ex: tf.train.Example.FromString(ex).features.feature["item_id"].int64_list.value[0])
        assert_that(items, equal_to([10, 11, 12, 30]), label="check_train")
        assert_that(out[DEAD_LETTER], equal_to([{
            "user_id": 2, "events": 2, "samples_written": 0,
            "reason": "ValueError: events need label and polarity: run "
                      "tfnegseq.data.rules.apply_rules",
        }]), label="check_dead_letter")
        samples = out[STATS] | beam.Map(lambda s: s.samples.tolist()) | beam.CombineGlobally(
            lambda xs: np.sum(list(xs) or [[0, 0, 0]], axis=0).tolist())
        assert_that(samples, equal_to([[4, 0, 0]]), label="check_stats")


def test_a_failing_user_is_counted_in_the_manifest(tmp_path, monkeypatch):
    """User 3's building raises after its first batch (8 examples) was written: one
    dead-letter user that says how many of its samples were written, and a manifest that
    counts exactly the examples in the shards."""
    from tests.helpers_data import read_split, write_log
    from tfnegseq.data import beam as beam_module

    real = beam_module.build_ctr_samples

    def failing_for_user_3(events, *args, **kwargs):
        for i, out in enumerate(real(events, *args, **kwargs)):
            if int(events.user_id[0]) == 3 and i == 1:
                raise RuntimeError("boom")
            yield out

    monkeypatch.setattr(beam_module, "build_ctr_samples", failing_for_user_3)
    write_log(tmp_path / "log", np.random.default_rng(5), users=6, per_user=20)
    cfg = config_from_dict({
        "source": {"kind": "kuairec", "path": str(tmp_path / "log")},
        "samples": {"max_history": 5, "batch_size": 8},
        "model": {"sequence_length": 10},
        "split": {"kind": "user", "valid_fraction": 0.0, "test_fraction": 0.0},
        "output": {"dir": str(tmp_path / "out"), "shards": 1},
    })
    manifest = job.run(cfg)
    recs = read_split(tmp_path / "out", "train")
    assert manifest["samples"]["train"] == len(recs) == 5 * 20 + 8
    assert manifest["dead_letters"] == 1 and manifest["dead_letter_users"] == 1
    dead = [ln for f in (tmp_path / "out" / "dead_letters").iterdir() for ln in f.read_text().splitlines()]
    assert len(dead) == 1 and '"user_id": 3' in dead[0] and '"samples_written": 8' in dead[0]
    assert '"reason": "RuntimeError: boom"' in dead[0]


@pytest.mark.parametrize("valid_start, test_start, warnings", [
    (100, 150, []),
    (100, 100, ["split 'valid' is empty (0 of 200 samples)"]),
    (100, 199, ["split 'test' is tiny: 1 of 200 samples (0.5%, under 1%)"]),
    (0, 0, ["split 'train' is empty (0 of 200 samples)",
            "split 'valid' is empty (0 of 200 samples)"]),
])
def test_manifest_warns_of_an_empty_or_tiny_split(tmp_path, valid_start, test_start, warnings):
    """200 events at T0 + 0, 1, ..., 199 s, temporal cut-offs at T0 + valid_start /
    test_start seconds."""
    from tests.helpers_data import write_rows

    write_rows(tmp_path / "log", [(i % 7, i % 13, i, 2.5) for i in range(200)])
    cfg = config_from_dict({
        "source": {"kind": "kuairec", "path": str(tmp_path / "log")},
        "samples": {"max_history": 5},
        "model": {"sequence_length": 10},
        "split": {"kind": "temporal", "valid_start": int((T0 + valid_start) * 1000),
                  "test_start": int((T0 + test_start) * 1000)},
        "output": {"dir": str(tmp_path / "out"), "shards": 1},
    })
    assert job.run(cfg)["warnings"] == warnings


# ------------------------------------------------------------------ side tables


def side_cfg(log_dir, out_dir=None, **samples):
    return config_from_dict({
        "source": {"kind": "kuairec", "path": str(log_dir)},
        "samples": {"max_history": 5, **samples},
        "model": {"sequence_length": 10},
        "split": {"kind": "user", "valid_fraction": 0.0, "test_fraction": 0.0},
        "output": {"dir": str(out_dir or log_dir / "out"), "shards": 1},
    })


def test_read_side_table_main_and_dead_letters(tmp_path):
    """A corrupt row and a duplicate id of `item_categories.csv` are dead letters (file,
    line, raw text, reason); the first row of item 10 is kept."""
    from tfnegseq.data.beam import ReadSideTable

    os.makedirs(tmp_path / "log")
    path = str(tmp_path / "log" / "item_categories.csv")
    with open(path, "w") as f:
        f.write('video_id,feat\n10,"[27, 9]"\n11\n10,"[4]"\n14,"[8]"\n')
    cfg = side_cfg(tmp_path / "log", item_features=["category"])
    with pipeline() as p:
        out = p | "ReadItems" >> ReadSideTable(cfg, "item")
        assert_that(out[MAIN], equal_to([(10, {"category": 27}), (14, {"category": 8})]),
                    label="check_main")
        assert_that(out[DEAD_LETTER], equal_to([
            {"file": path, "line": 3, "raw": "11", "reason": "expected 2 fields, found 1"},
            {"file": path, "line": 4, "raw": '10,"[4]"', "reason": "duplicate id"},
        ]), label="check_dead_letter")


def test_build_samples_fn_reads_no_raw_file_and_takes_side_inputs(tmp_path):
    """The side tables reach `BuildSamplesFn` as side inputs: its set-up reads nothing
    (the source directory does not even exist) and the examples carry the features."""
    cfg = side_cfg(tmp_path / "nowhere", tmp_path / "out", user_features=["age"],
                   item_features=["category"])
    BuildSamplesFn(cfg).setup()  # no FileNotFoundError: nothing is read here
    users = [(1, labelled_events(1, [10, 11]))]
    with pipeline() as p:
        profiles = p | "Profiles" >> beam.Create([(1, {"age": 30})])
        items = p | "Items" >> beam.Create([(10, {"category": 27})])
        out = p | beam.Create(users) | beam.ParDo(
            BuildSamplesFn(cfg), users=beam.pvalue.AsDict(profiles),
            items=beam.pvalue.AsDict(items),
        ).with_outputs(*SPLITS, SEQUENCES, VOCAB, STATS, DEAD_LETTER)

        def features(ex):
            f = tf.train.Example.FromString(ex).features.feature
            return tuple(f[k].int64_list.value[0] for k in ("item_id", "user_age", "item_category"))

        assert_that(out["train"] | beam.Map(features), equal_to([(10, 30, 27), (11, 30, -1)]),
                    label="check_train")
        assert_that(out[DEAD_LETTER], equal_to([]), label="check_dead_letter")


def test_job_reports_side_table_dead_letters(tmp_path):
    """End to end: the item table's corrupt row and duplicate are dead letters of the job
    (and counted in the manifest); samples carry the first row's category."""
    from tests.helpers_data import read_split, write_rows

    write_rows(tmp_path / "log", [(1, 10, 1, 2.5), (1, 11, 2, 0.3), (2, 10, 3, 2.5)])
    with open(tmp_path / "log" / "item_categories.csv", "w") as f:
        f.write('video_id,feat\n10,"[27, 9]"\n11,"[3]",x\n10,"[4]"\n')
    cfg = side_cfg(tmp_path / "log", tmp_path / "out", item_features=["category"])
    manifest = job.run(cfg)
    assert manifest["dead_letters"] == 2 and manifest["dead_letter_users"] == 0
    dead = sorted((d["line"], d["reason"]) for d in map(
        json.loads, (tmp_path / "out" / "dead_letters").glob("*").__next__().read_text().splitlines()))
    assert dead == [(3, "expected 2 fields, found 3"), (4, "duplicate id")]
    cats = {(r["item_id"][0], r["item_category"][0]) for r in read_split(tmp_path / "out", "train")}
    assert cats == {(10, 27), (11, -1)}
    assert manifest["counters"]["dead_letters_field_count"] == 1
    assert manifest["counters"]["dead_letters_duplicate_id"] == 1


# ------------------------------------------------------------------ metrics


def test_dead_letter_reason_keys():
    from tfnegseq.data.beam import reason_key

    assert reason_key({"reason": "encoding"}) == "encoding"
    assert reason_key({"reason": "blank line"}) == "blank_line"
    assert reason_key({"reason": "expected 8 fields, found 3"}) == "field_count"
    assert reason_key({"reason": "duplicate id"}) == "duplicate_id"
    assert reason_key({"reason": "user_id: not a non-negative integer: 'x'"}) == "bad_user_id"
    assert reason_key({"reason": "timestamp: 2100-01-01T00:00:00.000Z is outside"}) == "bad_timestamp"
    assert reason_key({"user_id": 3, "reason": "RuntimeError: boom"}) == "user_failed"
    assert reason_key({"reason": "unparsable row: x"}) == "unparsable_row"


def test_counters_are_in_the_manifest(tmp_path):
    """Events read, samples per split, users built and dead letters per reason: Beam
    counters in one namespace, read back from the PipelineResult into the manifest."""
    from tests.helpers_data import write_log

    rows = write_log(tmp_path / "log", np.random.default_rng(2), users=4, per_user=10)
    path = tmp_path / "log" / "big_matrix.csv"
    path.write_text(path.read_text() + "1,2,3\n\n" + kuairec_row(1, 2, T0, 0.3) + "\n")
    cfg = side_cfg(tmp_path / "log", tmp_path / "out")
    manifest = job.run(cfg)
    assert manifest["counters"] == {
        "events_read": len(rows) + 1, "files_read": 1, "users_built": 4,
        "samples_train": len(rows) + 1, "dead_letters_field_count": 1,
        "dead_letters_blank_line": 1,
    }


def test_progress_logs_at_most_once_per_interval(caplog):
    import logging

    from tfnegseq.data.beam import Progress

    clock = iter([0.0, 1.0, 2.0, 31.0, 32.0, 65.0]).__next__
    prog = Progress("events read", every_s=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="tfnegseq.beam"):
        for _ in range(5):
            prog.add(10)
    assert [r.getMessage() for r in caplog.records] == ["progress: 30 events read",
                                                        "progress: 50 events read"]
    assert prog.total == 50


# ------------------------------------------------------------------ vocabularies


def read_vocab_dir(out):
    return {f: open(os.path.join(out, "vocab", f)).read() for f in sorted(os.listdir(
        os.path.join(out, "vocab")))}


COUNTS = [(("item_id", i), c) for i, c in
          [(5, 3), (2, 3), (9, 1), (-1, 7), (4, 2), (7, 1), (3, 1), (8, 2), (1, 1)]]
COUNTS += [(("user_id", 1), 2), (("user_id", 0), 2)]


@pytest.mark.parametrize("rows_per_shard", [1_000_000, 2])
def test_write_vocabularies_sorted_by_count_then_id(tmp_path, rows_per_shard):
    """Count desc, then id asc, whether one shard or many are sorted and merged."""
    from tfnegseq.data.beam import WriteVocabularies

    with pipeline() as p:
        sizes = p | beam.Create(COUNTS) | WriteVocabularies(
            str(tmp_path), rows_per_shard=rows_per_shard)
        assert_that(sizes, equal_to([("item_id", 9), ("user_id", 2)]), label="check_sizes")
    assert read_vocab_dir(tmp_path) == {
        "item_id.tsv": "-1\t7\n2\t3\n5\t3\n4\t2\n8\t2\n1\t1\n3\t1\n7\t1\n9\t1\n",
        "user_id.tsv": "0\t2\n1\t2\n",
    }


def test_write_vocabularies_top_and_min_count(tmp_path):
    """`max_size` keeps the most frequent ids through a combiner (`Top.PerKey`), after
    the `min_count` filter; padding (-1) is never kept; the order is unchanged."""
    from tfnegseq.data.beam import WriteVocabularies

    with pipeline() as p:
        sizes = p | beam.Create(COUNTS) | WriteVocabularies(str(tmp_path), min_count=2,
                                                            max_size=3)
        assert_that(sizes, equal_to([("item_id", 3), ("user_id", 2)]), label="check_sizes")
    assert read_vocab_dir(tmp_path) == {"item_id.tsv": "2\t3\n5\t3\n4\t2\n",
                                        "user_id.tsv": "0\t2\n1\t2\n"}


def test_sum_vocab_counts(tmp_path):
    from tfnegseq.data.beam import SumVocabCounts

    bundles = [[(("item_id", 1), 2), (("item_id", 2), 1)], [(("item_id", 1), 3)]]
    with pipeline() as p:
        out = p | beam.Create(bundles) | SumVocabCounts()
        assert_that(out, equal_to([(("item_id", 1), 5), (("item_id", 2), 1)]),
                    label="check_main")


# ------------------------------------------------------------------ k-core and type hints


def test_kcore_filter_main_and_residual():
    """k = 2: item 9 (one event) goes, then user 3 (one event left) goes."""
    from tfnegseq.data.beam import KCORE_RESIDUAL, KCoreFilter

    users = [(1, labelled_events(1, [10, 11, 9])), (2, labelled_events(2, [10, 11])),
             (3, labelled_events(3, [10, 12]))]
    with pipeline() as p:
        out = p | beam.Create(users) | KCoreFilter(2, 3)
        assert_that(out[MAIN] | beam.FlatMap(lambda kv: [(kv[0], int(i)) for i in kv[1].item_id]),
                    equal_to([(1, 10), (1, 11), (2, 10), (2, 11)]), label="check_main")
        assert_that(out[KCORE_RESIDUAL], equal_to([0]), label="check_kcore_residual")


def test_every_dofn_and_ptransform_declares_its_types():
    """Type hints (input and output) on every DoFn and `ptransform_fn` of the module."""
    import inspect

    from apache_beam.typehints.decorators import get_type_hints

    from tfnegseq.data import beam as module

    checked, missing = [], []
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) and issubclass(obj, beam.DoFn):
            hints = object.__new__(obj).get_type_hints()
        elif inspect.isfunction(obj) and hasattr(obj, "__wrapped__"):  # ptransform_fn
            hints = get_type_hints(obj)
        else:
            continue
        checked.append(name)
        if hints.input_types is None or hints.output_types is None:
            missing.append(name)
    assert "BuildSamples" in checked and "ReadParseFn" in checked
    assert missing == []
