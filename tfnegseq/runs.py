"""Run directories: what training writes, and what export, scoring and serving read.

A run directory is self-contained: at training time the vocabularies, the samples'
manifest and a few examples (for the export's warm-up requests) are copied into
`<run_dir>/data/`, so exporting or scoring a run needs only the run directory, not the
samples directory it was trained from (which may be gone, or rebuilt since).

    <run_dir>/metrics.json             metrics, config, seed, versions
    <run_dir>/model.keras              the trained model
    <run_dir>/data/vocab/<name>.tsv    the vocabularies the model's rows come from
    <run_dir>/data/manifest.json       the samples' manifest (counts, schema hash)
    <run_dir>/data/examples.tfrecord.gz   up to 16 samples (warm-up requests)
"""

from __future__ import annotations

import json
import os
from typing import Any

from tfnegseq.config import Config, ConfigError, config_from_dict
from tfnegseq.config.sections import RESUME_FREE, flatten
from tfnegseq.data.manifest import read_manifest

RUN_DATA = "data"
BACKUP = "backup"
# Beside Keras' backup: the config hash, epochs done, time and throughput so far.
RESUME_STATE = "tfnegseq_resume.json"
EXAMPLES_FILE = "examples.tfrecord.gz"
NUM_EXAMPLES = 16


def samples_dir(cfg: Config) -> str:
    """The Beam job's output the config trains on (`train.data_dir`, else `output.dir`);
    `ConfigError` when it holds no samples, or samples built with another
    `samples.negative_history` (`check_negative_history`)."""
    d = cfg.train.data_dir or cfg.output.dir
    if "://" not in d and not os.path.exists(os.path.join(d, "manifest.json")):
        raise ConfigError(
            f"train.data_dir: no samples at {d!r} (manifest.json missing); "
            "run python -m beam_jobs.build_samples --config ... first"
        )
    check_negative_history(cfg, d)
    return d


# the samples keys `check_negative_history` compares, with the value a manifest written
# before they existed means
NEGATIVE_HISTORY_KEYS = {"negative_history": "recent", "negative_history_size": 0,
                         "negative_history_seed": 0}


# what else fixes the samples' content, compared where the manifest recorded it: keys
# a training config must share with its samples; lengths it may not exceed (a shorter
# one reads the most recent part of each list); side features it may leave unread
SAMPLES_KEYS = ("task", "before", "min_core", "target_stride", "max_targets_per_user",
                "negatives")
LENGTH_KEYS = ("max_history", "lifelong_length", "max_sequence")
FEATURE_KEYS = ("user_features", "item_features", "lifelong_item_features")
SECTION_KEYS = ("rules", "split")


def built_differently(cfg: Config, manifest: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, built, configured) for each `samples.<key>` of `SAMPLES_KEYS` and each
    section of `SECTION_KEYS` whose value in the manifest's config differs from `cfg`'s,
    each of `LENGTH_KEYS` whose configured length exceeds the built one (the lists hold
    no more than that: the rest would be padding) and each of `FEATURE_KEYS` that
    names a feature the samples lack; keys the manifest does not record are not
    compared, except `lifelong_item_features`, which a manifest written before the key
    existed lacks because its samples hold no such lists (read as [])."""
    built = manifest.get("config", {})
    made, mine = built.get("samples", {}), cfg.to_dict()
    want = mine["samples"]
    out = [(k, made[k], want[k]) for k in SAMPLES_KEYS if k in made and made[k] != want[k]]
    out += [(k, made[k], want[k]) for k in LENGTH_KEYS if k in made and want[k] > made[k]]
    # a manifest from before `lifelong_item_features` existed: its samples hold none
    made = {"lifelong_item_features": [], **made} if made else made
    out += [(k, made[k], want[k]) for k in FEATURE_KEYS
            if k in made and not set(want[k]) <= set(made[k])]
    out += [(k, built[k], mine[k]) for k in SECTION_KEYS if k in built and built[k] != mine[k]]
    return out


def check_negative_history(cfg: Config, data_dir: str) -> None:
    """Refuses to train on samples built otherwise than the config says:
    `samples.negative_history`, `negative_history_size` and `negative_history_seed`
    must equal those `<data_dir>/manifest.json` recorded (a key an older manifest lacks
    counts as its default: "recent", 0, 0), and so must the rest of what fixed the
    samples (`built_differently`: e.g. `samples.max_history` 500 on samples built with
    100 would train on lists padded past their real length). The samples
    are fixed when they are built; training cannot change them. No manifest (a remote
    directory without one): nothing to compare.

    Raises:
        ConfigError: naming each differing key, both values and the directory.
    """
    manifest = read_manifest(data_dir)
    if manifest is None:
        return
    built = manifest.get("config", {}).get("samples", {})
    differ = [(k, built.get(k, default), getattr(cfg.samples, k))
              for k, default in NEGATIVE_HISTORY_KEYS.items()
              if built.get(k, default) != getattr(cfg.samples, k)]
    # size 0 means max_history at build time: a drawn list must be as long as the one
    # this config reads (more draws, then the most recent kept, is no uniform draw)
    drawn = built.get("negative_history_size", 0) or built.get("max_history")
    if (not differ and cfg.samples.negative_history != "recent" and drawn is not None
            and drawn != cfg.samples.negative_history_length()):
        differ.append(("negative_history_size (0 = max_history)", drawn,
                       cfg.samples.negative_history_length()))
    differ += [(k, got, want) for k, got, want in built_differently(cfg, manifest)]
    if differ:
        listed = "; ".join(f"{'' if '.' in k else 'samples.'}{k} is {want!r} in the config "
                           f"but the samples were built with {got!r}" for k, got, want in differ)
        raise ConfigError(
            f"train.data_dir: {listed} ({data_dir!r}, manifest.json); rebuild the samples "
            "with this config (python -m beam_jobs.build_samples --config ...) or train "
            "from a samples directory built with it")


def run_data_dir(run_dir: str) -> str:
    return os.path.join(run_dir, RUN_DATA)


def copy_run_data(data_dir: str, run_dir: str) -> str:
    """Copies the vocabularies, the manifest and a few examples of `data_dir` into
    `<run_dir>/data/`; returns that directory."""
    import tensorflow as tf

    from tfnegseq.data.input import split_files

    out = run_data_dir(run_dir)
    tf.io.gfile.makedirs(os.path.join(out, "vocab"))
    vocab = os.path.join(data_dir, "vocab")
    for name in tf.io.gfile.listdir(vocab):
        if not tf.io.gfile.isdir(os.path.join(vocab, name)):
            tf.io.gfile.copy(os.path.join(vocab, name), os.path.join(out, "vocab", name),
                             overwrite=True)
    tf.io.gfile.copy(os.path.join(data_dir, "manifest.json"),
                     os.path.join(out, "manifest.json"), overwrite=True)
    examples: list[bytes] = []
    for split in ("test", "valid", "train", "sequences"):
        try:
            files = split_files(data_dir, split)
        except FileNotFoundError:
            continue
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(NUM_EXAMPLES)
        examples = [bytes(x.numpy()) for x in ds]
        if examples:
            break
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(out, EXAMPLES_FILE), options) as writer:
        for record in examples:
            writer.write(record)
    return out


def read_run_examples(run_dir: str) -> list[bytes]:
    """The examples `copy_run_data` kept; `FileNotFoundError` when there are none."""
    import tensorflow as tf

    path = os.path.join(run_data_dir(run_dir), EXAMPLES_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found; re-train the run with this version")
    found = [bytes(x.numpy()) for x in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    if not found:
        raise FileNotFoundError(f"{path} holds no examples (the samples had none)")
    return found


def load_run(run_dir: str) -> tuple[Config, dict[str, Any]]:
    """(config, metrics) of a finished training run, from `<run_dir>/metrics.json`."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; is {run_dir!r} a finished training run?")
    with open(path, encoding="utf-8") as f:
        metrics = json.load(f)
    if "config" not in metrics:
        raise ConfigError(f"{path}: no 'config' entry (written by an older trainer?)")
    return config_from_dict(metrics["config"], where=path), metrics


def read_resume_state(run_dir: str, cfg: Config) -> dict[str, Any] | None:
    """The state of an interrupted run in `run_dir` (None when there is none).

    Raises:
        ConfigError: the interrupted run was trained with another config (another
            `Config.model_hash()`: model, data, optimizer, batch ...), or its backup
            carries no recorded config; resuming it would load mismatched weights or
            silently continue the old run.
    """
    backup = os.path.join(run_dir, BACKUP)
    if not os.path.isdir(backup) or not os.listdir(backup):
        return None
    how = (f"delete {backup} to start this run afresh, or train into another "
           "train.run_dir")
    path = os.path.join(backup, RESUME_STATE)
    if not os.path.exists(path):
        raise ConfigError(
            f"train.run_dir: {run_dir!r} holds an interrupted run whose config was not "
            "recorded (an older version wrote it, or it stopped between Keras' backup and "
            f"the state record of its first epoch); {how}"
        )
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if state.get("config_hash") != cfg.model_hash():
        old, new = flatten(state.get("config", {})), flatten(cfg.to_dict())
        changed = sorted(k for k in set(old) | set(new)
                         if old.get(k) != new.get(k) and not k.startswith(RESUME_FREE))
        listed = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"train.run_dir: {run_dir!r} holds an interrupted run trained with a different "
            f"config ({listed or 'config hash differs'}); resuming would mix the two. {how}"
        )
    if not any(name.startswith("process_") for name in os.listdir(backup)):
        epochs = _backup_epoch(backup, how)
        if epochs != state.get("epochs_done"):
            # killed between Keras' backup and this record (or Keras falls back to the
            # previous epoch's copy): Keras' epoch is where training resumes
            state = {**state, "epochs_done": epochs,
                     "epochs": list(state.get("epochs", []))[:epochs]}
    return state


def _readable_h5(path: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def _backup_epoch(backup: str, how: str) -> int:
    """The epoch Keras' `BackupAndRestore` (one process, `double_checkpoint`) resumes a
    run at from `backup`: after the epoch its `training_metadata.json` names, from
    `latest.weights.h5`, or from the previous epoch's `.bkp` copies when the latest
    weights file does not open (a process killed while Keras rewrote it in place).
    `ConfigError` when neither is usable: without this check Keras would resume from
    freshly initialised weights when the weights file is gone (it skips a missing one)
    and fail with h5py's error when it is truncated and has no copy."""
    weights, meta = (os.path.join(backup, "latest.weights.h5"),
                     os.path.join(backup, "training_metadata.json"))
    if _readable_h5(weights):
        use = meta
    elif _readable_h5(weights + ".bkp") and os.path.exists(meta + ".bkp"):
        use = meta + ".bkp"
    else:
        what = "is truncated" if os.path.exists(weights) else "is missing"
        raise ConfigError(f"train.run_dir: the interrupted run's weights {weights!r} {what} "
                          f"and no earlier copy opens; {how}")
    try:
        with open(use, encoding="utf-8") as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"train.run_dir: the interrupted run's {use!r} is unreadable "
                          f"({error}); {how}") from error


def write_resume_state(run_dir: str, cfg: Config, state: dict[str, Any]) -> None:
    """Records the run's progress beside Keras' backup (atomically)."""
    backup = os.path.join(run_dir, BACKUP)
    os.makedirs(backup, exist_ok=True)
    path = os.path.join(backup, RESUME_STATE)
    record = {"config_hash": cfg.model_hash(), "config": cfg.to_dict(), **state}
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)
