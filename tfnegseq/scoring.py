"""Batch scoring of samples with an exported model, on Beam (RunInference).

`python -m beam_jobs.score_samples --model_dir EXPORTED_VERSION_DIR \
--input 'DIR/test/*.tfrecord.gz' --output PREFIX [Beam options]` calls `main`:

    TFRecord samples (gzip, the Beam job's tf.Examples)
      -> KeyExamples      (user_id, order, item_id, label) key per record; dead letter
                          when a key or a feature the model reads is missing or malformed
      -> RunInference     KeyedModelHandler(ScoreExamplesModelHandler): batches of
                          serialized examples through the SavedModel's `score_examples`
                          signature; a failing batch goes to the dead letters
      -> PREFIX-SSSSS-of-NNNNN.jsonl      {"user_id", "order", "item_id", "label",
                                          "probability"} per sample
         PREFIX-dead_letters-SSSSS-of-NNNNN.jsonl   {"file", "reason", "record_b64"}
         PREFIX-summary.json              {"scored": n, "dead_letters": m}

Beam's `TFModelHandlerTensor` is not used: in Beam 2.77 its module imports
`tensorflow_hub` (not a dependency here) and it loads models with
`tf.keras.models.load_model`, which under Keras 3 cannot read a SavedModel directory.
`ScoreExamplesModelHandler` is a small `ModelHandler` that loads the SavedModel with
`tf.saved_model.load` (TensorFlow only, no Keras, no tfnegseq model code) and calls the
signature.

DirectRunner by default (through Beam's FnApiRunner, as the sample-building job);
`--runner DataflowRunner --project P --region R --temp_location gs://... \
--extra_package dist/tfnegseq-0.1.0-py3-none-any.whl` with `gs://` paths runs on
Dataflow. Everything is read through Beam's FileSystems or `tf.io.gfile`, so the
launcher and the workers need no shared local disk.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)

from tfnegseq import schema
from tfnegseq.config import Config, config_from_dict
from tfnegseq.signatures import EXAMPLES_INPUT, EXAMPLES_SIGNATURE, METADATA_FILE, OUTPUT

log = logging.getLogger("tfnegseq.scoring")

MAIN = "main"
DEAD_LETTER = "dead_letter"
KEY_FIELDS = ("user_id", "order", "item_id", "label")
REQUIRED_KEYS = ("user_id", "order", "item_id")  # `label` may be absent (null in the output)
NAMESPACE = "tfnegseq_score"

Key = tuple[int, int, int, int | None]


class ScoreExamplesModelHandler(ModelHandler[bytes, PredictionResult, Any]):
    """RunInference handler: serialized tf.Examples -> probability, via a SavedModel.

    Args:
        model_dir: str. An exported version directory (`.../<model>/<version>`), local
            or `gs://`.
        signature: str. The signature to call; it takes `examples` string [B] and
            returns `probability` [B]. Defaults to "score_examples".
        min_batch_size: int. Smallest batch `BatchElements` forms. Defaults to 1.
        max_batch_size: int. Largest batch. Defaults to 1024.
        **kwargs: other `ModelHandler` arguments (`large_model`, `model_copies`, ...).
    """

    def __init__(
        self,
        model_dir: str,
        signature: str = EXAMPLES_SIGNATURE,
        *,
        min_batch_size: int = 1,
        max_batch_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size, **kwargs)
        self._model_dir = model_dir
        self._signature = signature

    def load_model(self) -> Any:
        """The loaded SavedModel (`tf.saved_model.load`); its signatures are called."""
        import tensorflow as tf

        model = tf.saved_model.load(self._model_dir)
        if self._signature not in model.signatures:
            raise ValueError(
                f"{self._model_dir} has no signature {self._signature!r}; "
                f"found {sorted(model.signatures)}"
            )
        return model

    def run_inference(
        self,
        batch: Sequence[bytes],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Scores one batch of serialized examples: one `PredictionResult` each."""
        import tensorflow as tf

        fn = model.signatures[self._signature]
        probs = fn(**{EXAMPLES_INPUT: tf.constant(list(batch), dtype=tf.string)})[OUTPUT]
        return [
            PredictionResult(example, float(p), self._model_dir)
            for example, p in zip(batch, probs.numpy().tolist(), strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


def _int_value(feature: Any) -> int | None:
    """The single int64 value of a `tf.train.Feature`, else None."""
    if feature.WhichOneof("kind") != "int64_list" or len(feature.int64_list.value) != 1:
        return None
    return int(feature.int64_list.value[0])


Check = tuple[str, bool, str, bool]  # (feature, is_list, dtype, required)


def check_example(record: bytes, checks: Sequence[Check]) -> tuple[Key | None, str | None]:
    """(key, None) for a scoreable record, (None, reason) otherwise.

    Mirrors what `score_examples` parses, so a record that passes cannot fail the
    graph's parse: each feature in `checks` present must have that dtype (scalars
    exactly one value); a missing scalar is allowed only when not `required` (the
    export gives the scalars the model does not read a default); lists may be absent.
    `user_id`, `order` and `item_id` (the key) are always required; `label` may be
    absent (null in the output).
    """
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    try:
        example.ParseFromString(record)
    except Exception as e:  # protobuf's DecodeError; never fail the job
        return None, f"not a tf.Example: {type(e).__name__}: {e}"
    feats = example.features.feature
    for name in REQUIRED_KEYS:
        if name not in feats or _int_value(feats[name]) is None:
            return None, f"{name}: needs exactly one int64 value"
    for name, is_list, dtype, required in checks:
        kind = "int64_list" if dtype == "int64" else "float_list"
        if name not in feats:
            if required and not is_list:
                return None, f"{name}: missing"
            continue
        feature = feats[name]
        which = feature.WhichOneof("kind")
        if which not in (kind, None):
            return None, f"{name}: expected {kind}, got {which}"
        if not is_list and (which is None or len(getattr(feature, kind).value) != 1):
            return None, f"{name}: needs exactly one value"
    label = _int_value(feats["label"]) if "label" in feats else None
    user, order, item = (_int_value(feats[n]) for n in REQUIRED_KEYS)
    return (user, order, item, label), None  # type: ignore[return-value]


def model_checks(cfg: Config) -> list[Check]:
    """`check_example` checks for the samples `cfg` describes: every feature of the
    schema, required when it is a scalar the exported model reads."""
    from tfnegseq import kinds

    read = set(kinds.get_kind(cfg.model.kind).model_inputs(cfg))
    return [(f.name, f.is_list, f.dtype, f.name in read) for f in schema.features(cfg.samples)]


class KeyExamplesFn(beam.DoFn):
    """(file, record) -> (key, record); malformed records to `DEAD_LETTER`."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self._checks = list(checks)
        self._dead = beam.metrics.Metrics.counter(NAMESPACE, "dead_letters")

    def process(self, element: tuple[str, bytes]) -> Iterator[Any]:
        path, record = element
        key, reason = check_example(record, self._checks)
        if key is None:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(path, record, reason or ""))
            return
        yield key, record


def dead_letter(path: str, record: bytes, reason: str) -> dict[str, Any]:
    """A dead-letter row: file, reason and the raw record (base64)."""
    return {"file": path, "reason": reason, "record_b64": base64.b64encode(record).decode()}


def prediction_row(element: tuple[Key, PredictionResult]) -> dict[str, Any]:
    """(key, PredictionResult) -> the output row."""
    key, result = element
    row: dict[str, Any] = dict(zip(KEY_FIELDS, key, strict=True))
    row["probability"] = result.inference
    return row


def failed_batch_rows(element: tuple[Any, Any]) -> Iterator[dict[str, Any]]:
    """RunInference's (failed batch, error) -> one dead-letter row per keyed record."""
    batch, error = element
    # ParDo exception handling gives (exception type, repr, traceback lines).
    message = error[1] if isinstance(error, tuple) and len(error) > 1 else error
    for key, record in batch:
        row = dead_letter("", record, f"inference failed: {message}")
        row.update(zip(KEY_FIELDS, key, strict=True))
        yield row


@beam.ptransform_fn
def ScoreSamples(  # noqa: N802
    records: beam.PCollection, model_dir: str, cfg: Config, max_batch_size: int = 1024
) -> dict[str, beam.PCollection]:
    """(file, serialized tf.Example) -> {MAIN: output rows, DEAD_LETTER: dead letters}."""
    keyed = records | "KeyExamples" >> beam.ParDo(KeyExamplesFn(model_checks(cfg))).with_outputs(
        DEAD_LETTER, main=MAIN
    )
    handler: KeyedModelHandler[Key, bytes, PredictionResult, Any] = KeyedModelHandler(
        ScoreExamplesModelHandler(model_dir, max_batch_size=max_batch_size)
    )
    scored, failed = keyed[MAIN] | "RunInference" >> RunInference(handler).with_exception_handling()
    rows = scored | "ToRows" >> beam.Map(prediction_row)
    failed_rows = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_rows)
    dead = (keyed[DEAD_LETTER], failed_rows) | "AllDeadLetters" >> beam.Flatten()
    return {MAIN: rows, DEAD_LETTER: dead}


def _summary(scored: int, dead: int) -> str:
    return json.dumps({"scored": scored, "dead_letters": dead}, sort_keys=True)


@beam.ptransform_fn
def WriteScores(
    outputs: dict[str, beam.PCollection],
    output: str,  # noqa: N802
    num_shards: int = 0,
) -> beam.PCollection:
    """Writes the JSONL predictions, the dead letters and `PREFIX-summary.json`."""
    to_json = "ToJson"
    (
        outputs[MAIN]
        | to_json >> beam.Map(json.dumps, sort_keys=True)
        | (
            "WritePredictions"
            >> beam.io.WriteToText(
                output,
                file_name_suffix=".jsonl",
                num_shards=num_shards,
                shard_name_template="-SSSSS-of-NNNNN",
            )
        )
    )
    (
        outputs[DEAD_LETTER]
        | "DeadToJson" >> beam.Map(json.dumps, sort_keys=True)
        | (
            "WriteDeadLetters"
            >> beam.io.WriteToText(
                f"{output}-dead_letters",
                file_name_suffix=".jsonl",
                num_shards=1,
                shard_name_template="-SSSSS-of-NNNNN",
            )
        )
    )
    scored = outputs[MAIN] | "CountScored" >> beam.combiners.Count.Globally()
    dead = outputs[DEAD_LETTER] | "CountDead" >> beam.combiners.Count.Globally()
    return (
        scored
        | "Summary" >> beam.Map(_summary, dead=beam.pvalue.AsSingleton(dead))
        | "WriteSummary"
        >> beam.io.WriteToText(
            f"{output}-summary", file_name_suffix=".json", num_shards=1, shard_name_template=""
        )
    )


def load_export_config(model_dir: str) -> Config:
    """The training config stored beside an exported model (`assets.extra`)."""
    path = FileSystems.join(model_dir, "assets.extra", METADATA_FILE)
    try:
        with FileSystems.open(path) as f:
            meta = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise FileNotFoundError(
            f"{path} not found; --model_dir must be a version directory written by "
            "python -m tfnegseq.export"
        ) from e
    return config_from_dict(meta["config"], where=path)


def run(
    model_dir: str,
    input_pattern: str,
    output: str,
    beam_args: list[str] | None = None,
    max_batch_size: int = 1024,
    num_shards: int = 0,
) -> dict[str, Any]:
    """Runs the scoring job; returns the summary when the runner waits (DirectRunner).

    Raises:
        FileNotFoundError: no file matches `input_pattern`, or `model_dir` is not an
            exported version.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from tfnegseq.data.job import direct_runner

    cfg = load_export_config(model_dir)
    if not FileSystems.match([input_pattern])[0].metadata_list:
        raise FileNotFoundError(f"--input {input_pattern!r}: no files match")
    options = PipelineOptions(beam_args or [])
    runner_name = options.view_as(StandardOptions).runner
    local = runner_name in (None, "DirectRunner")
    runner = direct_runner(options) if local else None
    pipeline = beam.Pipeline(runner=runner, options=options)
    outputs = (
        pipeline
        | "Pattern" >> beam.Create([input_pattern])
        | "ReadSamples" >> beam.io.ReadAllFromTFRecord(with_filename=True)
        | "Score" >> ScoreSamples(model_dir, cfg, max_batch_size)
    )
    _ = outputs | "Write" >> WriteScores(output, num_shards)
    result = pipeline.run()
    if not local:
        log.info("submitted; the summary will be at %s-summary.json", output)
        return {"submitted": True, "output": output}
    result.wait_until_finish()
    with FileSystems.open(f"{output}-summary.json") as f:
        summary = json.loads(f.read().decode("utf-8"))
    summary["output"] = output
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; unknown arguments go to Beam. Returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.score_samples",
        description="Score TFRecord samples with an exported model (Beam RunInference).",
    )
    parser.add_argument("--model_dir", required=True, help="exported version directory")
    parser.add_argument("--input", required=True, help="e.g. 'DIR/test/*.tfrecord.gz'")
    parser.add_argument("--output", required=True, help="output prefix (local or gs://)")
    parser.add_argument("--max_batch_size", type=int, default=1024)
    parser.add_argument("--num_shards", type=int, default=0, help="0: the runner decides")
    args, beam_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        summary = run(
            args.model_dir, args.input, args.output, beam_args, args.max_batch_size, args.num_shards
        )
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
