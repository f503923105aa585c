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

The signatures come from the run's model kind (`ModelKind.export_module`; for the
`ctr` kind see `tfnegseq.kinds.ctr.export`). Every export reads only the run directory
(`tfnegseq.runs`): the model, its config, the vocabularies and the warm-up examples
copied there at training time.

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
from collections.abc import Iterable
from typing import Any

from tfnegseq import schema
from tfnegseq.config import ConfigError
from tfnegseq.runs import load_run, read_run_examples, run_data_dir
from tfnegseq.signatures import METADATA_FILE, WARMUP_FILE

log = logging.getLogger("tfnegseq.export")


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


# --------------------------------------------------------------------------- warm-up


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
        FileNotFoundError: the run (or its copied data) is missing.
        FileExistsError: `version` already exists.
        ValueError: the run's vocabularies do not match the trained model.
    """
    import keras
    import tensorflow as tf

    import tfnegseq.models  # noqa: F401  (registers the model classes for loading)
    from tfnegseq import kinds
    from tfnegseq.data.input import FeatureProcessor
    from tfnegseq.provenance import versions

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "Export needs the TensorFlow Keras backend (set KERAS_BACKEND=tensorflow). "
            f"Received: backend={keras.backend.backend()}"
        )
    cfg, metrics = load_run(run_dir)
    kind = kinds.get_kind(cfg.model.kind)
    model_path = os.path.join(run_dir, "model.keras")
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"{model_path} not found; is {run_dir!r} a finished run?")
    data_dir = run_data_dir(run_dir)
    if not os.path.isdir(os.path.join(data_dir, "vocab")):
        raise FileNotFoundError(
            f"{data_dir}/vocab not found: {run_dir!r} was trained before runs kept their "
            "vocabularies; train it again to export it"
        )
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
    trained_sizes = getattr(model, "vocab_sizes", None) or {}  # models that record them
    for name, vocab in processor.vocabularies.items():
        trained = trained_sizes.get(name)
        if trained is not None and trained != vocab.size:
            raise ValueError(
                f"vocabulary {name!r} in {data_dir} has {vocab.size} rows but the model was "
                f"trained with {trained}; the run directory was changed after training"
            )
    _relax_unread_features(processor, kind.model_inputs(cfg))
    examples = read_run_examples(run_dir)

    with tempfile.TemporaryDirectory(prefix="tfnegseq-export-") as scratch:
        _asset_lookups(processor, os.path.join(scratch, "vocab"))
        module, signatures, described = kind.export_module(model, processor, cfg)
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
            for rec in kind.warmup_records(model_name, examples, cfg):
                writer.write(rec)
        meta = {
            "model_name": model_name,
            "version": version,
            "run_dir": os.path.abspath(run_dir),
            "data_dir": metrics.get("data_dir"),
            "model_kind": kind.name,
            "max_history": cfg.samples.max_history,
            "signatures": described,
            "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "metrics": {k: metrics.get(k) for k in kind.metric_keys},
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
