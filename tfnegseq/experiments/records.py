"""Result files of the experiment CLIs: one JSON per sweep, a record per finished run.

A sweep appends each run's record as soon as it ends (`save` writes through a temporary
file and renames it), so an interrupted sweep resumes where it stopped; a run
interrupted mid-training resumes after its last finished epoch when the sweep is run
again with the same runs directory (`prepare_run_dir`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def load(path: str) -> dict[str, Any]:
    """The sweep's JSON, or an empty one (`{"records": []}`)."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"records": []}


def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf) replaced by None, recursively:
    JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def save(path: str, data: dict[str, Any]) -> None:
    """Writes `data` to `path` atomically, as strict JSON (non-finite floats as null)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(finite(data), f, indent=2, allow_nan=False)
    os.replace(tmp, path)


def mean_std(records: Iterable[dict[str, Any]], group: tuple[str, ...],
             metrics: Iterable[str]) -> dict[tuple[Any, ...], dict[str, tuple[float, float, int]]]:
    """Group records by the `group` fields -> {metric: (mean, sample std, runs)}; a metric
    missing from some records is summarised over those that have it."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r[g] for g in group), []).append(r)
    out: dict[tuple[Any, ...], dict[str, tuple[float, float, int]]] = {}
    for key, rs in groups.items():
        out[key] = {}
        for m in metrics:
            v = np.array([r[m] for r in rs if r.get(m) is not None], dtype=np.float64)
            if len(v):
                out[key][m] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                               len(v))
    return out


def recorded_seeds(data: dict[str, Any]) -> list[int]:
    """The seeds of the records a report summarises (the last call's `--seeds`, kept in
    `data["seeds"]`, may name fewer)."""
    return sorted({int(r["seed"]) for r in data["records"]})


# Overrides every CTR / CAIN sweep run adds: training batches in a fixed order, so that
# a seed's rerun repeats (without it, same-config reruns of revision 1 differed by up
# to 0.009 AUC, as large as several of the effects measured). The SINE sweeps (their
# revision-2 records predate this) keep the config's setting.
SWEEP_OVERRIDES = ["train.deterministic_input=true"]

# Keys that name where a run writes or which seed it uses, not what it trains.
RUN_ONLY = ("train.run_dir", "train.seed", "train.export", "output.dir", "source.path")
# Config keys added after records carried fingerprints, with their defaults: left out of
# the hash while at the default, so adding an option leaves every earlier record's
# fingerprint (and the record) valid.
LATER_KEYS = {"model.polarity_labels": "observed", "samples.negative_history": "recent",
              "samples.negative_history_size": 0, "samples.negative_history_seed": 0,
              "train.deterministic_ops": False, "samples.lifelong_item_features": []}


# Code revisions per model kind: bumped when a code change alters what an unchanged
# config trains or how it is scored, so that the records of the older code stop
# matching (`fingerprint`) and a sweep reruns them instead of averaging the two.
# Revision 1 is left out of the hash (the fingerprints written before revisions).
#   2 (2026-12-06): padding and OOV rows of the id tables start at zero (CTR, CAIN);
#     CAIN: MSIA's TCN centres from the newest item, PEG's generator bias, ETA / SDIM
#     hashing the raw items, positions in the self-attention extractor.
#   sequential 2 (2026-12-06, commit b0e8a1a): length-grouped batches weigh every pair
#     alike, full ranking excludes every earlier positive, the popularity floor counts
#     training positives (its records carry fingerprints since revision 2 only).
CODE_REVISION = {"ctr": 2, "cain": 2, "sequential": 2}


# The expected fingerprint of a recorded setting the sweep's config cannot load: no
# record carries it, so `set_aside_stale` sets such records aside.
UNLOADABLE = "unloadable"


def fingerprint(cfg: Any) -> str:
    """A short hash of everything a run's config trains with (the resolved config less
    `RUN_ONLY`) and of its kind's `CODE_REVISION`: two runs of one sweep with the same
    fingerprint are the same setting on the same code revision."""
    import dataclasses
    import hashlib

    data = dataclasses.asdict(cfg)
    model = data.get("model", {})
    if model.get("kind") == "cain" and "strides" in model:
        # one model, one hash: strides None means 1 then `later_stride`, which is read
        # only then (a setting giving the same strides explicitly is the same model)
        if model["strides"] is None:
            model["strides"] = [1] + [model["later_stride"]] * (model["msia_layers"] - 1)
        model.pop("later_stride", None)
    revision = CODE_REVISION.get(getattr(cfg.model, "kind", ""), 1)
    if revision != 1:
        data["code_revision"] = revision
    for key in RUN_ONLY:
        section, name = key.split(".")
        data.get(section, {}).pop(name, None)
    for key, default in LATER_KEYS.items():
        section, name = key.split(".")
        if data.get(section, {}).get(name, default) == default:
            data.get(section, {}).pop(name, None)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_unchanged(cfg: Any, expected: str, where: str) -> None:
    """Refuses a run whose config is not the one its sweep fingerprinted at start (e.g.
    the YAML was edited mid-sweep): its record would carry the older config's hash."""
    if fingerprint(cfg) != expected:
        raise SystemExit(f"error: {where}: the config differs from the one this sweep "
                         "started with (was the config file edited?); run the sweep "
                         "again to set the older runs aside")


def current(records: Iterable[dict[str, Any]], expected: dict[tuple[Any, ...], str],
            key: tuple[str, ...]) -> list[dict[str, Any]]:
    """The records whose config is what the sweep would run now: a record whose `key`
    fields are in `expected` and whose `config_sha` differs from it is dropped (a run of
    another setting or of an older code revision), as is one without a `config_sha`
    (written before fingerprints, so before any code revision)."""
    out = []
    for r in records:
        want = expected.get(tuple(r[k] for k in key))
        if want is None or r.get("config_sha") == want:
            out.append(r)
    return out


def set_aside_stale(data: dict[str, Any], expected: dict[tuple[Any, ...], str],
                    key: tuple[str, ...]) -> None:
    """Keeps in `data["records"]` only the records `current` keeps; the others move to
    `data["discarded_records"]` marked "config changed" (kept, never reported; a new
    `CODE_REVISION` counts as a change)."""
    kept = current(data["records"], expected, key)
    stale = [r for r in data["records"] if r not in kept]
    if stale:
        print(f"{len(stale)} record(s) of another config moved to discarded_records", flush=True)
        data.setdefault("discarded_records", []).extend(
            {**r, "discarded": "config changed"} for r in stale)
    data["records"] = kept


def ctr_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """The fields a CTR sweep records of one run's `metrics.json` (`run_config`'s)."""
    keys = ("auc", "gauc", "logloss", "eval_examples", "train_examples_per_second", "seconds")
    return {k: metrics[k] for k in keys}


def ctr_line(metrics: dict[str, Any]) -> str:
    """One progress line for a finished CTR run."""
    return (f"    auc={metrics['auc']:.4f} gauc={metrics['gauc']:.4f} "
            f"logloss={metrics['logloss']:.4f} ({metrics['seconds']:.0f}s)")


# Written into a run directory when a sweep starts the run there: the run's
# `fingerprint`, which, unlike the backup's `Config.model_hash()`, includes the kind's
# `CODE_REVISION`.
RUN_MARK = "sweep_run.json"


def prepare_run_dir(cfg: Any) -> None:
    """Readies `cfg.train.run_dir` for a sweep's run of `cfg`: an interrupted run there
    is kept for `tfnegseq.train` to resume (weights, optimizer and validation state from
    `backup/`; the trainer's metrics say after which epoch), or the directory is cleared.

    An interrupted run is resumed only when the directory's `RUN_MARK` names this
    run's `fingerprint` (same config and code revision) and the trainer's resume state
    matches the config. Anything else there (a run of another fingerprint, one from a
    version that wrote no mark, one killed before its first epoch's backup, a finished
    run the sweep never recorded) is removed, so no stale weights are continued. The
    mark is (re)written before training starts."""
    import shutil

    from tfnegseq.config import ConfigError
    from tfnegseq.runs import read_resume_state

    run_dir = cfg.train.run_dir
    sha = fingerprint(cfg)
    mark = os.path.join(run_dir, RUN_MARK)
    state = None
    if os.path.isdir(run_dir):
        try:
            with open(mark, encoding="utf-8") as f:
                marked = json.load(f).get("config_sha")
        except (OSError, ValueError, AttributeError):
            marked = None
        if marked != sha:
            why = "not this sweep's run" if marked is None else "a run of another config"
        elif os.path.exists(os.path.join(run_dir, "metrics.json")):
            why = "finished but not recorded"
        else:
            try:
                state = read_resume_state(run_dir, cfg)
                why = "killed before its first epoch's backup"
            except ConfigError as error:
                why = str(error).split("; delete")[0]
        if state is None:
            print(f"    removing the interrupted run {run_dir} ({why})", flush=True)
            shutil.rmtree(run_dir)
        else:
            print(f"    resuming the interrupted run {run_dir} after epoch "
                  f"{state['epochs_done']}", flush=True)
    os.makedirs(run_dir, exist_ok=True)
    with open(mark + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"config_sha": sha}, f)
    os.replace(mark + ".tmp", mark)


def run_ctr(path: str, data: dict[str, Any], cfg: Any, **fields: Any) -> dict[str, Any]:
    """Trains one CTR run of a sweep (`tfnegseq.train.run_config`, fresh Keras session),
    appends `{**fields, **ctr_fields(metrics)}` to `data` and saves it at once; returns
    the run's metrics.

    An interrupted run of the same fingerprint in `cfg.train.run_dir` is resumed, and
    its record says after which epoch (`resumed_from_epoch`); anything else there is
    removed first (`prepare_run_dir`)."""
    import keras

    from tfnegseq.provenance import versions
    from tfnegseq.train import run_config

    prepare_run_dir(cfg)
    keras.backend.clear_session()
    metrics = run_config(cfg, verbose=0)
    resumed = metrics.get("resumed_from_epoch")  # the trainer's, from its resume state
    data["records"].append({**fields, **ctr_fields(metrics),
                            **({"resumed_from_epoch": resumed} if resumed else {})})
    data["versions"] = versions()
    save(path, data)
    print(ctr_line(metrics), flush=True)
    return metrics


def describe(data: dict[str, Any], prog: str, argv: list[str] | None, **fields: Any) -> None:
    """Records how a sweep was run (the command, the machine and `fields`) in `data`."""
    data.update(
        **fields,
        command=f"python -m {prog} " + " ".join(argv or sys.argv[1:]),
        machine={"processor": platform.processor() or platform.machine(),
                 "cores": os.cpu_count()},
    )


def finish(path: str, data: dict[str, Any], ran: bool,
           markdown: Callable[[dict[str, Any]], str], plot: Callable[[str], None]) -> str:
    """Saves the JSON (stamped `finished` when this call ran runs), writes the markdown
    beside it (`.md`) and the plot (`.png`); returns the markdown."""
    if ran:
        data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    save(path, data)
    stem = os.path.splitext(path)[0]
    text = markdown(data)
    with open(stem + ".md", "w") as f:
        f.write(text)
    plot(stem + ".png")
    return text


# ---------------------------------------------------------------------------- merging
# What names a run in every sweep's records: CTR and CAIN studies add `study`, Table 2
# adds `backbone`; `setting` and `seed` are always there.
RUN_KEY = ("study", "backbone", "setting", "seed")


class MergeError(ValueError):
    """Sweep files that cannot be merged (named in the message)."""


def run_key(record: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The fields of `RUN_KEY` a record has, as `(field, value)` pairs."""
    return tuple((f, record[f]) for f in RUN_KEY if f in record)


def _read_sweep(path: str) -> dict[str, Any]:
    """A sweep file for `merge`, or `MergeError` naming the path."""
    try:
        data = load(path)
    except (OSError, json.JSONDecodeError) as e:
        raise MergeError(f"{path}: not readable as JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise MergeError(f"{path}: not a sweep file (no `records` list)")
    return data


def merge(target: str, sources: list[str], note: str | None = None) -> tuple[int, int]:
    """Adds to the sweep file `target` the records of the sweep files `sources` (the
    same sweep run from several processes, each with its own `--results-dir`), keyed by
    `RUN_KEY`; returns `(added, already_present)`.

    A record whose run the target already holds, with the same values, is skipped; with
    other values (two runs of one setting and seed, or runs of different configs) the
    merge is refused, as are files of another dataset or without `records`: nothing is
    written then. `target` is created from the first source's metadata when absent;
    otherwise its metadata (command, config, notes) stay, `note` is appended to its
    `notes`, and its `finished` stamp becomes the latest of the files' (a source's runs
    may have ended later). The markdown and plot are not rewritten: run the sweep with
    `--report-only` (it also sets aside records of another config or code revision)."""
    data = _read_sweep(target)  # {"records": []} when absent
    fresh = not os.path.exists(target)
    held = {run_key(r): (target, r) for r in data["records"]}
    added = present = 0
    for src in sources:
        if not os.path.exists(src):
            raise MergeError(f"{src}: no such file")
        other = _read_sweep(src)
        if fresh:
            data = {**{k: v for k, v in other.items() if k != "records"}, "records": []}
            fresh = False
        if data.get("dataset") and other.get("dataset") and data["dataset"] != other["dataset"]:
            raise MergeError(f"{src}: dataset {other['dataset']!r}, but {target} holds "
                             f"{data['dataset']!r}")
        for i, r in enumerate(other["records"]):
            if not isinstance(r, dict) or "setting" not in r or "seed" not in r:
                raise MergeError(f"{src}: record {i} has no `setting` and `seed`")
            key = run_key(r)
            if key in held:
                where, kept = held[key]
                if kept != r:
                    run = ", ".join(f"{f}={v!r}" for f, v in key)
                    raise MergeError(f"{src}: record {i} ({run}) differs from the one in "
                                     f"{where}; remove one of the two runs first")
                present += 1
                continue
            data["records"].append(r)
            held[key] = (src, r)
            added += 1
        if other.get("finished") and str(other["finished"]) > str(data.get("finished", "")):
            data["finished"] = other["finished"]  # ISO timestamps order as strings
    if note:
        data["notes"] = f"{data['notes']} {note}" if data.get("notes") else note
    save(target, data)
    return added, present


def merge_main(argv: list[str] | None = None) -> int:
    """`python -m tfnegseq.experiments merge TARGET SOURCE [SOURCE ...] [--note TEXT]`."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m tfnegseq.experiments merge",
        description="Add the records of sweep files written by other processes (their "
                    "--results-dir) to one sweep file; then rewrite its tables and plot "
                    "with the sweep's --report-only.")
    ap.add_argument("target", help="the sweep JSON to add to (created when absent)")
    ap.add_argument("sources", nargs="+", help="sweep JSONs of the same sweep")
    ap.add_argument("--note", help="text appended to the target's notes (how the runs "
                                   "were made)")
    args = ap.parse_args(argv)
    try:
        added, present = merge(args.target, args.sources, args.note)
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.target}: {added} record(s) added, {present} already there; rewrite its "
          "tables and plot with the sweep's --report-only", flush=True)
    return 0
