"""Export CLI: `python -m tfnegseq.export --run-dir RUN [--version N] [--export-base DIR]
[--model-name NAME]`.

Turns a training run (`<run>/model.keras` + `<run>/metrics.json`) into a SavedModel in TF
Serving's layout, `<export_base>/<model_name>/<version>/`:

    saved_model.pb, variables/     a plain graph (no XLA, only core TF ops)
    assets/<vocab>.txt             one raw id per line: the id lookup tables
    assets.extra/tf_serving_warmup_requests   PredictionLog records (both signatures)
    assets.extra/tfnegseq_export.json         run, data dir, config, signature inputs

Defaults: `export_base` = `<run>/export`, `model_name` = the config's `name`, `version` =
1 + the highest integer version directory already there. On a local disk the version
directory is written under a temporary name and renamed into place, so a polling server
never sees half a model (a `gs://` export base is written in place).

Signatures (ids are raw; the lookups run inside the graph; H = `samples.max_history`):

`serving_default` (JSON-friendly, one row per user):

    user_id                          int64 [B]
    pos_item_id, pos_order           int64 [B, W+]  W+ <= H, oldest first; left-padded in
    neg_item_id, neg_order           int64 [B, W-]  the graph to H with -1 ids / 0 orders
    item_id                          int64 [B, C]   C >= 1 candidates
    user_<f> (samples.user_features) int64 [B]
    item_<f> (samples.item_features) int64 [B, C]   side feature of each candidate
    -> probability                   float32 [B, C]

A batch mixing history lengths is left-padded by the client with -1 ids / 0 orders.
A history wider than H fails a `tf.debugging` assertion (InvalidArgumentError, HTTP 400:
"history longer than trained: ... max_history=H"), as does C = 0 ("empty candidate
list"). User-level tensors are tiled over the C candidates and the model (which builds
the mixed-polarity sequence itself) scores B * C rows.

`score_examples`: `examples` string [B] (serialized tf.Example in the Beam job's format,
parsed by the training `FeatureProcessor`) -> `probability` float32 [B]. Features the
model does not read (`label`, `timestamp`, `order`) may be left out.

Example:
    version_dir = export_run("runs/demo/Mix_Seq_plus_TAPF")
    # .../runs/demo/Mix_Seq_plus_TAPF/export/synthetic/1
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tfnegseq import schema
from tfnegseq.config import Config, ConfigError, config_from_dict

log = logging.getLogger("tfnegseq.export")

SERVING_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "score_examples"
EXAMPLES_INPUT = "examples"
OUTPUT = "probability"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "tfnegseq_export.json"
# Warm-up requests: (batch size, candidates per row) for serving_default, batch sizes for
# score_examples. Small, so a server's start-up stays fast.
WARMUP_SERVING = ((1, 10), (4, 3))
WARMUP_EXAMPLES = (1, 8)


# --------------------------------------------------------------------------- inputs


def serving_inputs(cfg: Config) -> dict[str, tuple[str, str | None]]:
    """`serving_default` inputs: name -> (kind, vocabulary).

    kind is "user" ([B]), "history" ([B, None]) or "candidate" ([B, C]); vocabulary is
    the id vocabulary the input is looked up in, or None (orders).
    """
    from tfnegseq.train import side_feature_names

    fmap = schema.feature_map(cfg.samples)
    out: dict[str, tuple[str, str | None]] = {}
    names = ["user_id", "pos_item_id", "pos_order", "neg_item_id", "neg_order", "item_id"]
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


def _input_specs(cfg: Config) -> dict[str, Any]:
    import tensorflow as tf

    shapes = {"user": [None], "history": [None, None], "candidate": [None, None]}
    return {
        name: tf.TensorSpec(shapes[kind], tf.int64, name=name)
        for name, (kind, _) in serving_inputs(cfg).items()
    }


# --------------------------------------------------------------------------- lookups


def _asset_lookups(processor: Any, vocab_dir: str) -> None:
    """Replaces the processor's lookups by identical ones read from vocabulary files.

    `IntegerLookup(vocabulary=<file>)` builds its table with a `TextFileInitializer`,
    so `tf.saved_model.save` stores the ids as assets (not as graph constants, which
    would hit the 2 GB proto limit on large vocabularies). Same ids, same order, same
    mask and OOV buckets as `Vocabulary.lookup_layer()`, hence the same rows.
    """
    import keras

    os.makedirs(vocab_dir, exist_ok=True)
    for name, vocab in processor.vocabularies.items():
        path = os.path.join(vocab_dir, f"{name}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{int(i)}\n" for i in vocab.ids)
        processor.lookups[name] = keras.layers.IntegerLookup(
            vocabulary=path,
            mask_token=schema.PAD_ID,
            num_oov_indices=vocab.oov_buckets,
            vocabulary_dtype="int64",
            output_mode="int",
            name=f"lookup_{name}",
        )


def _relax_unread_features(processor: Any, read: Iterable[str]) -> None:
    """Gives scalar features the model does not read a default, so `score_examples`
    accepts examples without `label`, `timestamp` or `order` (they are parsed and
    dropped); features the model reads stay required."""
    import tensorflow as tf

    read = set(read)
    for f in processor.features:
        if not f.is_list and f.name not in read:
            dtype = tf.int64 if f.dtype == "int64" else tf.float32
            processor.spec[f.name] = tf.io.FixedLenFeature([], dtype, default_value=0)


# --------------------------------------------------------------------------- module


def build_module(model: Any, processor: Any, cfg: Config) -> Any:
    """A `tf.Module` with the two serving functions (see the module docstring).

    Tracks the model's variables and the lookup tables, not the Keras objects, so the
    SavedModel loads with TensorFlow alone.
    """
    import tensorflow as tf

    from tfnegseq.models.ctr import model_inputs
    from tfnegseq.train import side_feature_names

    inputs = serving_inputs(cfg)
    model_keys = model_inputs(cfg.model, side_feature_names(cfg))
    max_history = processor.max_lengths["pos_item_id"]
    lookups = processor.lookups

    def serve(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        candidates = features["item_id"]  # [B, C]
        batch = tf.shape(candidates)[0]
        num = tf.shape(candidates)[1]
        checks = [
            tf.debugging.assert_greater_equal(
                num, 1, message="empty candidate list: item_id needs at least one candidate"
            )
        ]
        for name, (kind, _) in inputs.items():
            x = features[name]
            checks.append(
                tf.debugging.assert_equal(
                    tf.shape(x)[0],
                    batch,
                    message=f"batch size of {name} differs from that of item_id",
                )
            )
            if kind == "history":
                checks.append(
                    tf.debugging.assert_less_equal(
                        tf.shape(x)[1],
                        max_history,
                        message=f"history longer than trained: {name} may hold at most "
                        f"max_history={max_history} entries",
                    )
                )
            elif kind == "candidate" and name != "item_id":
                checks.append(
                    tf.debugging.assert_equal(
                        tf.shape(x)[1],
                        num,
                        message=f"{name} needs one value per candidate in item_id",
                    )
                )
        for prefix in ("pos", "neg"):
            checks.append(
                tf.debugging.assert_equal(
                    tf.shape(features[f"{prefix}_item_id"]),
                    tf.shape(features[f"{prefix}_order"]),
                    message=f"{prefix}_item_id and {prefix}_order need the same shape",
                )
            )
        rows: dict[str, tf.Tensor] = {}
        with tf.control_dependencies(checks):
            for name, (kind, vocab) in inputs.items():
                x = tf.identity(features[name])
                if kind == "history":
                    pad = schema.PAD_ID if vocab else 0
                    width = tf.maximum(max_history - tf.shape(x)[1], 0)
                    x = tf.pad(x, [[0, 0], [width, 0]], constant_values=tf.cast(pad, tf.int64))
                    x.set_shape([None, max_history])  # [B, H]
                if vocab:
                    x = tf.cast(lookups[vocab](x), tf.int64)
                if kind == "candidate":
                    x = tf.reshape(x, [-1])  # [B * C]
                else:
                    x = tf.repeat(x, num, axis=0)  # [B * C] or [B * C, H]
                rows[name] = x
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


# --------------------------------------------------------------------------- warm-up


def _read_examples(data_dir: str, count: int) -> list[bytes]:
    import tensorflow as tf

    from tfnegseq.data.input import split_files

    for split in ("test", "valid", "train"):
        try:
            files = split_files(data_dir, split)
        except FileNotFoundError:
            continue
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
        found = [bytes(x.numpy()) for x in ds]
        if found:
            return found
    raise FileNotFoundError(f"no samples in {data_dir}/{{test,valid,train}} for warm-up requests")


def raw_serving_batch(
    examples: list[bytes], cfg: Config, batch: int, candidates: int
) -> dict[str, np.ndarray]:
    """`serving_default` inputs (raw ids) built from real samples.

    Row b takes the user-level features and histories of `examples[b]`; its candidates
    are the target items (with their side features) of `candidates` consecutive samples.
    Histories are left-padded with -1 ids / 0 orders to the longest in the batch.
    """
    import tensorflow as tf

    parsed = tf.io.parse_example(tf.constant(examples), schema.parse_spec(cfg.samples))
    out: dict[str, np.ndarray] = {}
    for name, (kind, vocab) in serving_inputs(cfg).items():
        x = parsed[name]
        if kind == "history":
            rows = [r[: cfg.samples.max_history] for r in x[:batch].to_list()]
            width = max(1, max(len(r) for r in rows))
            pad = schema.PAD_ID if vocab else 0
            out[name] = np.asarray([[pad] * (width - len(r)) + r for r in rows], np.int64)
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
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    def record(signature: str, inputs: Mapping[str, np.ndarray]) -> bytes:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        log_ = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        return log_.SerializeToString()

    out = [
        record(SERVING_SIGNATURE, raw_serving_batch(examples, cfg, b, c)) for b, c in WARMUP_SERVING
    ]
    for b in WARMUP_EXAMPLES:
        batch = np.asarray([examples[i % len(examples)] for i in range(b)], dtype=object)
        out.append(record(EXAMPLES_SIGNATURE, {EXAMPLES_INPUT: batch}))
    return out


# --------------------------------------------------------------------------- export


def existing_versions(model_dir: str) -> list[int]:
    """Integer version directories under `model_dir`, ascending."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(model_dir):
        return []
    found = []
    for entry in tf.io.gfile.listdir(model_dir):
        entry = entry.rstrip("/")
        if entry.isdigit() and tf.io.gfile.isdir(os.path.join(model_dir, entry)):
            found.append(int(entry))
    return sorted(found)


def load_run(run_dir: str) -> tuple[Config, dict[str, Any]]:
    """(config, metrics) of a training run, from `<run_dir>/metrics.json`."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; is {run_dir!r} a finished training run?")
    with open(path, encoding="utf-8") as f:
        metrics = json.load(f)
    if "config" not in metrics:
        raise ConfigError(f"{path}: no 'config' entry (written by an older trainer?)")
    return config_from_dict(metrics["config"], where=path), metrics


def export_run(
    run_dir: str,
    export_base: str | None = None,
    model_name: str | None = None,
    version: int | None = None,
) -> str:
    """Exports a training run as a versioned SavedModel; returns the version directory.

    Args:
        run_dir: str. A run directory written by `tfnegseq.train` (`model.keras`,
            `metrics.json`).
        export_base: str or None. Root of the export tree. Defaults to
            `<run_dir>/export`.
        model_name: str or None. Directory (and TF Serving model) name. Defaults to
            the config's `name`.
        version: int or None. Version number; refused if it exists. Defaults to one
            more than the highest existing version (1 for the first).

    Returns:
        The version directory `<export_base>/<model_name>/<version>`.

    Raises:
        FileNotFoundError: the run or its data directory is missing.
        FileExistsError: `version` already exists.
        ValueError: the data directory's vocabularies do not match the trained model.
    """
    import keras
    import tensorflow as tf

    import tfnegseq.models.ctr  # noqa: F401  (registers CtrModel for loading)
    from tfnegseq.data.input import FeatureProcessor
    from tfnegseq.train import data_dir_of, versions

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "Export needs the TensorFlow Keras backend (set KERAS_BACKEND=tensorflow). "
            f"Received: backend={keras.backend.backend()}"
        )
    cfg, metrics = load_run(run_dir)
    if cfg.samples.task != "ctr":
        raise ValueError(f"only ctr runs can be exported. Received: task={cfg.samples.task}")
    model_path = os.path.join(run_dir, "model.keras")
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"{model_path} not found; is {run_dir!r} a finished run?")
    data_dir = data_dir_of(cfg)
    model_name = model_name or cfg.name
    export_base = export_base or os.path.join(run_dir, "export")
    model_dir = os.path.join(export_base, model_name)
    taken = existing_versions(model_dir)
    if version is None:
        version = (taken[-1] if taken else 0) + 1
    elif version < 0:
        raise ValueError(f"`version` must be >= 0. Received: version={version}")
    elif version in taken:
        raise FileExistsError(f"{model_dir}/{version} exists; pick another --version")
    final = os.path.join(model_dir, str(version))

    model = keras.saving.load_model(model_path, compile=False)
    processor = FeatureProcessor.from_data_dir(data_dir, cfg)
    for name, vocab in processor.vocabularies.items():
        trained = model.vocab_sizes.get(name)
        if trained is not None and trained != vocab.size:
            raise ValueError(
                f"vocabulary {name!r} in {data_dir} has {vocab.size} rows but the model was "
                f"trained with {trained}; export with the data directory the run used"
            )
    from tfnegseq.models.ctr import model_inputs
    from tfnegseq.train import side_feature_names

    _relax_unread_features(processor, model_inputs(cfg.model, side_feature_names(cfg)))
    examples = _read_examples(data_dir, 16)

    with tempfile.TemporaryDirectory(prefix="tfnegseq-export-") as scratch:
        _asset_lookups(processor, os.path.join(scratch, "vocab"))
        module = build_module(model, processor, cfg)
        signatures = {
            SERVING_SIGNATURE: module.serve.get_concrete_function(),
            EXAMPLES_SIGNATURE: module.score_examples.get_concrete_function(),
        }
        remote = "://" in model_dir
        target = final if remote else os.path.join(model_dir, f".tmp-{version}-{os.getpid()}")
        tf.io.gfile.makedirs(model_dir)
        if not remote and os.path.exists(target):
            shutil.rmtree(target)
        tf.saved_model.save(
            module, target, signatures=signatures, options=tf.saved_model.SaveOptions()
        )
        extra = os.path.join(target, "assets.extra")
        tf.io.gfile.makedirs(extra)
        with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
            for rec in warmup_records(model_name, examples, cfg):
                writer.write(rec)
        meta = {
            "model_name": model_name,
            "version": version,
            "run_dir": os.path.abspath(run_dir),
            "data_dir": data_dir,
            "max_history": processor.max_lengths["pos_item_id"],
            "signatures": {
                SERVING_SIGNATURE: {
                    "inputs": {n: k for n, (k, _) in serving_inputs(cfg).items()},
                    "outputs": {OUTPUT: "float32 [B, C]"},
                },
                EXAMPLES_SIGNATURE: {
                    "inputs": {EXAMPLES_INPUT: "string [B]"},
                    "outputs": {OUTPUT: "float32 [B]"},
                },
            },
            "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "metrics": {k: metrics.get(k) for k in ("auc", "gauc", "logloss")},
            "versions": versions(),
            "config": cfg.to_dict(),
        }
        with tf.io.gfile.GFile(os.path.join(extra, METADATA_FILE), "w") as f:
            f.write(json.dumps(meta, indent=2))
        if not remote:
            os.rename(target, final)  # atomic: a polling server sees all or nothing
    log.info("exported %s -> %s", run_dir, final)
    return final


def read_metadata(version_dir: str) -> dict[str, Any]:
    """The `assets.extra/tfnegseq_export.json` of an exported version."""
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(version_dir, "assets.extra", METADATA_FILE)) as f:
        return json.loads(f.read())


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m tfnegseq.export",
        description="Export a training run as a versioned SavedModel for TF Serving.",
    )
    parser.add_argument("--run-dir", required=True, help="run directory of tfnegseq.train")
    parser.add_argument("--export-base", default=None, help="default: <run-dir>/export")
    parser.add_argument("--model-name", default=None, help="default: the config's name")
    parser.add_argument(
        "--version", type=int, default=None, help="default: 1 + the highest existing version"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # saver chatter
    try:
        path = export_run(args.run_dir, args.export_base, args.model_name, args.version)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    sys.exit(main())
