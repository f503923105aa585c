"""Batch scoring on Beam: every test sample scored like the Keras model; dead letters."""

from __future__ import annotations

import glob
import json

import numpy as np
import pytest

from tests.helpers_export import (
    keras_probabilities,
    raw_rows,
    read_examples,
    to_example,
    trained_export,
)


@pytest.fixture(scope="module")
def exported(tiny_samples, tmp_path_factory):
    return trained_export(tiny_samples, tmp_path_factory)


def read_jsonl(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def test_job_scores_every_test_sample_like_keras(exported, tmp_path, capsys):
    from tfnegseq.scoring import main

    prefix = str(tmp_path / "scores" / "pred")
    rc = main(
        [
            "--model_dir",
            exported.version_dir,
            "--input",
            f"{exported.data_dir}/test/*.tfrecord.gz",
            "--output",
            prefix,
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    got = read_jsonl(f"{prefix}-[0-9]*-of-*.jsonl")

    examples = read_examples(exported.data_dir, "test")
    raw = raw_rows(exported.cfg, examples)
    want = np.concatenate(
        [keras_probabilities(exported, examples[i : i + 256]) for i in range(0, len(examples), 256)]
    )
    assert len(got) == len(examples) == summary["scored"]
    assert summary["dead_letters"] == 0
    assert read_jsonl(f"{prefix}-dead_letters-*.jsonl") == []
    reference = {(r["user_id"], r["order"]): (r, p) for r, p in zip(raw, want, strict=True)}
    assert len(reference) == len(examples)  # user_id + order names a sample
    for row in got:
        r, p = reference[(row["user_id"], row["order"])]
        assert (row["item_id"], row["label"]) == (r["item_id"], r["label"])
        assert row["probability"] == pytest.approx(p, rel=1e-5, abs=1e-6)


def test_malformed_records_go_to_dead_letters(exported, tmp_path):
    import tensorflow as tf

    from tfnegseq.scoring import run

    examples = read_examples(exported.data_dir, "test", count=3)
    rows = raw_rows(exported.cfg, examples)
    no_user = {k: v for k, v in rows[1].items() if k != "user_id"}
    bad_side = {**rows[2], "item_category": [1, 2]}  # a scalar feature with two values
    path = str(tmp_path / "in" / "part-0.tfrecord.gz")
    tf.io.gfile.makedirs(str(tmp_path / "in"))
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for record in (
            examples[0],
            b"\x00not a tf.Example",
            to_example(no_user),
            to_example(bad_side),
        ):
            w.write(record)
    prefix = str(tmp_path / "out" / "pred")
    summary = run(exported.version_dir, str(tmp_path / "in" / "*.tfrecord.gz"), prefix)
    assert (summary["scored"], summary["dead_letters"]) == (1, 3)
    dead = read_jsonl(f"{prefix}-dead_letters-*.jsonl")
    reasons = sorted(d["reason"].split(":")[0] for d in dead)
    assert reasons == ["item_category", "not a tf.Example", "user_id"]
    assert all(d["file"] == path and d["record_b64"] for d in dead)
    (row,) = read_jsonl(f"{prefix}-[0-9]*-of-*.jsonl")
    assert row["probability"] == pytest.approx(
        keras_probabilities(exported, examples[:1])[0], rel=1e-5, abs=1e-6
    )


def test_check_example_keys_and_reasons():
    from tfnegseq.scoring import check_example

    checks = [
        ("user_id", False, "int64", True),
        ("timestamp", False, "int64", False),
        ("pos_item_id", True, "int64", True),
        ("item_category", False, "int64", True),
    ]
    good = {"user_id": 7, "order": 3, "item_id": 11, "item_category": 2, "pos_item_id": [1, 2]}
    assert check_example(to_example({**good, "label": 1}), checks) == ((7, 3, 11, 1), None)
    assert check_example(to_example(good), checks) == ((7, 3, 11, None), None)  # no label
    no_hist = {k: v for k, v in good.items() if k != "pos_item_id"}
    assert check_example(to_example(no_hist), checks)[0] is not None  # lists may be absent
    key, reason = check_example(to_example({**good, "pos_item_id": [0.5]}), checks)
    assert key is None and reason.startswith("pos_item_id: expected int64_list")
    no_order = {k: v for k, v in good.items() if k != "order"}
    assert check_example(to_example(no_order), checks) == (
        None,
        "order: needs exactly one int64 value",
    )
    no_side = {k: v for k, v in good.items() if k != "item_category"}
    assert check_example(to_example(no_side), checks) == (None, "item_category: missing")
    # an unread scalar may be absent, but when present it must parse
    key, reason = check_example(to_example({**good, "timestamp": 1.5}), checks)
    assert key is None and reason.startswith("timestamp: expected int64_list")


def test_failed_batches_become_one_dead_letter_per_record():
    from tfnegseq.scoring import failed_batch_rows

    batch = [((1, 2, 3, 0), b"a"), ((1, 5, 4, None), b"b")]
    error = (ValueError, "ValueError('boom')", ["Traceback ..."])
    rows = list(failed_batch_rows((batch, error)))
    assert [(r["user_id"], r["order"], r["label"]) for r in rows] == [(1, 2, 0), (1, 5, None)]
    assert all(r["reason"] == "inference failed: ValueError('boom')" for r in rows)
