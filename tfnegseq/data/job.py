"""Driver of the sample-building Beam job: options, pipeline, manifest and schema.

`python -m beam_jobs.build_samples --config CONFIG [--set k=v ...] [Beam options]`
calls `main`. Arguments other than `--config` / `--set` must be Beam pipeline options
(`--runner DataflowRunner --project P --region R --temp_location gs://... \
 --extra_package dist/tfnegseq-0.1.0-py3-none-any.whl` launches on Dataflow); anything
else (a typo such as `--sett`) is refused with one line and exit code 2, as is every
config error (one line naming the config file). No option is abbreviated.

A finished run prints the job's Beam counters (`tfnegseq.data.beam`, namespace
`tfnegseq`) and stores them in the manifest under `counters`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, NoReturn

from tfnegseq.config import Config, ConfigError, add_config_args, load_config, require_source
from tfnegseq.data.rules import RulesError

log = logging.getLogger("tfnegseq.build_samples")

OUTPUT_SUBDIRS = ("train", "valid", "test", "sequences", "dead_letters", "vocab",
                  "_vocab_shards")


class UsageError(ValueError):
    """A command line that cannot be run (an argument nobody knows)."""


def _clear_previous(out_dir: str) -> None:
    """Removes shards of an earlier run so splits never mix runs."""
    from apache_beam.io.filesystems import FileSystems

    patterns = [FileSystems.join(out_dir, d, "*") for d in OUTPUT_SUBDIRS]
    patterns += [FileSystems.join(out_dir, n) for n in ("_stats.json", "manifest.json")]
    for pattern in patterns:
        for m in FileSystems.match([pattern])[0].metadata_list:
            FileSystems.delete([m.path])


def _remove_vocab_shards(out_dir: str) -> None:
    """Removes the sorted vocabulary shards once the job has merged them."""
    from apache_beam.io.filesystems import FileSystems

    from tfnegseq.data.beam import VOCAB_SHARD_DIR

    shard_dir = FileSystems.join(out_dir, VOCAB_SHARD_DIR)
    for m in FileSystems.match([FileSystems.join(shard_dir, "*")])[0].metadata_list:
        FileSystems.delete([m.path])
    if "://" not in out_dir and FileSystems.exists(shard_dir):
        FileSystems.delete([shard_dir])


def _read_text(path: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def _write_text(path: str, text: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


TINY_SPLIT = 0.01  # a split with fewer than this share of the samples is "tiny"


def split_warnings(samples: dict[str, int]) -> list[str]:
    """Manifest warnings for splits that came out empty or tiny (< 1% of the samples),
    as a temporal split does when a few timestamps stretch the time span."""
    total = sum(samples.values())
    if not total:
        return ["no samples were written"]
    out = []
    for split, n in samples.items():
        if n == 0:
            out.append(f"split {split!r} is empty (0 of {total} samples)")
        elif n < TINY_SPLIT * total:
            out.append(f"split {split!r} is tiny: {n} of {total} samples "
                       f"({100 * n / total:.2g}%, under {100 * TINY_SPLIT:g}%)")
    return out


def finalize(cfg: Config, seconds: float, counters: dict[str, int] | None = None
             ) -> dict[str, Any]:
    """Writes `manifest.json` and `schema.pbtxt` from the job's `_stats.json`.

    `dead_letters` counts every record of `dead_letters/*.jsonl`: refused rows (of the
    logs and the side tables) and users whose sample building failed
    (`dead_letter_users` of them). `warnings` lists empty or tiny splits
    (`split_warnings`). `counters`: the job's Beam counters (`job_counters`).
    """
    from apache_beam.io.filesystems import FileSystems
    from google.protobuf import text_format

    from tfnegseq import schema

    out = cfg.output.dir
    stats = json.loads(_read_text(FileSystems.join(out, "_stats.json")))
    samples = stats["samples"]
    total = stats["total"]
    warnings = split_warnings(samples)
    for w in warnings:
        log.warning("%s", w)
    manifest = {
        "config_name": cfg.name,
        "config_hash": cfg.hash(),
        "task": cfg.samples.task,
        "source": {"kind": cfg.source.kind, "path": cfg.source.path},
        "samples": samples,
        "total_samples": total,
        "positive_rate": {
            s: (stats["positives"][s] / samples[s] if samples[s] else None) for s in samples
        },
        "vocab_sizes": stats["vocab_sizes"],
        "max_history": cfg.samples.max_history,
        "history_length": {
            "pos_max": stats["pos_len_max"],
            "neg_max": stats["neg_len_max"],
            "pos_mean": stats["pos_len_sum"] / total if total else 0.0,
            "neg_mean": stats["neg_len_sum"] / total if total else 0.0,
            "life_max": stats.get("life_len_max", 0),
            "life_mean": stats.get("life_len_sum", 0) / total if total else 0.0,
        },
        "lifelong_length": cfg.samples.lifelong_length,
        "dead_letters": stats["dead_letters"],
        "dead_letter_users": stats.get("dead_letter_users", 0),
        "warnings": warnings,
        "excluded": stats["excluded"],
        "kcore_residual_events": stats.get("kcore_residual_events"),
        "features": [f.name for f in schema.features(cfg.samples)],
        "seconds": round(seconds, 3),
        "samples_per_second": round(total / seconds, 1) if seconds > 0 else None,
        "counters": dict(counters or {}),
        "config": cfg.to_dict(),
    }
    _write_text(FileSystems.join(out, "manifest.json"), json.dumps(manifest, indent=2) + "\n")
    _write_text(
        FileSystems.join(out, "schema.pbtxt"),
        text_format.MessageToString(schema.tfmd_schema(cfg.samples)),
    )
    return manifest


def direct_runner(options: Any) -> Any:
    """Beam's FnApiRunner, which DirectRunner would pick for this pipeline after first
    trying to download the Prism binary (a network fetch this job must not depend on).
    Honours `--direct_running_mode` and `--direct_num_workers`."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    )
    return fn_runner.FnApiRunner(provision_info=info)


def check_inputs(cfg: Config, where: str = "config") -> list[str]:
    """The log files to read, after checking what the job needs before it starts:
    `source.path`, the log files and the requested side features. Raises `ConfigError`
    naming `where` (the config file) and the key."""
    from tfnegseq.data.sources import make_source

    require_source(cfg, where)
    src = make_source(cfg.source)
    try:
        files = src.log_files()
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{where}: source.path: {e}") from None
    if not files:
        raise ConfigError(f"{where}: source.path: no log files found in {cfg.source.path!r}")
    s = cfg.samples
    for key, users, items in (("user_features", s.user_features, []),
                              ("item_features", [], s.item_features)):
        try:
            src.check_side_features(list(users), list(items))
        except OSError as e:
            raise ConfigError(f"{where}: samples.{key} {list(users or items)}: cannot read "
                              f"{getattr(e, 'filename', '') or e}: {e.strerror or e}") from None
        except ValueError as e:
            raise ConfigError(f"{where}: samples.{key}: {e}") from None
    return files


def job_counters(result: Any) -> dict[str, int]:
    """The job's counters (namespace `tfnegseq.data.beam.NAMESPACE`) of a finished
    `PipelineResult`, name -> value (committed, else attempted), sorted by name; {} for
    a runner that reports none."""
    from apache_beam.metrics.metric import MetricsFilter

    from tfnegseq.data.beam import NAMESPACE

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception as e:  # noqa: BLE001 - metrics are a report, never a failure
        log.warning("no counters from the runner: %s", e)
        return {}
    out: dict[str, int] = {}
    for c in found:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def counters_table(counters: dict[str, int]) -> str:
    """`counters:` and one indented `name value` line per counter."""
    width = max((len(k) for k in counters), default=0)
    return "\n".join(["counters:"] + [f"  {k:<{width}}  {v}" for k, v in counters.items()])


def run(cfg: Config, beam_args: list[str] | None = None, where: str = "config") -> dict[str, Any]:
    """Runs the job (DirectRunner unless `beam_args` say otherwise); returns the manifest.
    Config problems found before the pipeline starts raise `ConfigError` naming `where`."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from tfnegseq.data.beam import BuildSamples, WriteOutputs

    files = check_inputs(cfg, where)
    options = PipelineOptions(beam_args or [])
    runner_name = options.view_as(StandardOptions).runner
    runner = direct_runner(options) if runner_name in (None, "DirectRunner") else None
    _clear_previous(cfg.output.dir)
    log.info("building samples from %d file(s) into %s", len(files), cfg.output.dir)
    start = time.perf_counter()
    p = beam.Pipeline(runner=runner, options=options)
    outputs = (
        p
        | "ListFiles" >> beam.Create(list(enumerate(files)))
        | "Build" >> BuildSamples(cfg)
    )
    _ = outputs | "Write" >> WriteOutputs(cfg)
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    _remove_vocab_shards(cfg.output.dir)
    return finalize(cfg, seconds, job_counters(result))


def unknown_beam_args(flags: list[str]) -> list[str]:
    """The arguments of `flags` that no registered Beam pipeline option knows (the
    parser Beam's own `PipelineOptions.get_all_options` builds). Raises `UsageError`
    for a known option with a bad value."""
    from apache_beam.options.pipeline_options import PipelineOptions

    found: list[list[str]] = []

    def probe(parser: Any) -> None:
        def refuse(message: str) -> NoReturn:
            raise UsageError(f"Beam option: {message}")

        parser.error = refuse  # one line, no usage text, no exit
        found.append(parser.parse_known_args(flags)[1])

    PipelineOptions(flags).get_all_options(add_extra_args_fn=probe, retain_unknown_options=True)
    return found[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.build_samples",
        description="Build leakage-free training samples (TFRecords) from raw logs with Beam. "
                    "Other arguments must be Beam pipeline options (e.g. --runner).",
        allow_abbrev=False,
    )
    add_config_args(parser)

    def refuse(message: str) -> NoReturn:
        raise UsageError(message)

    parser.error = refuse  # type: ignore[method-assign]
    return parser


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(our arguments, Beam's). An argument that is neither ours nor a known Beam
    pipeline option raises `UsageError` naming it."""
    args, beam_args = _parser().parse_known_args(argv)
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise UsageError(
            f"unknown argument(s) {' '.join(unknown)}: neither --config / --set nor a Beam "
            "pipeline option (options are never abbreviated)"
        )
    return args, beam_args


def _one_line(error: Exception) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


class _QuietRulesErrors(logging.Filter):
    """Drops Beam's own ERROR log (with traceback) of a `RulesError`: `main` reports it
    in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, RulesError) and "make the rules disjoint" not in str(
            record.msg)


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("apache_beam.runners.common").addFilter(_QuietRulesErrors())
    try:
        args, beam_args = parse_args(argv)
    except UsageError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        check_inputs(cfg, args.config)
    except ConfigError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    try:
        manifest = run(cfg, beam_args, where=args.config)
    except RulesError as e:  # found in the data, inside the pipeline
        message = _one_line(e).split(" [while running")[0]
        print(f"error: {args.config}: {message}", file=sys.stderr)
        return 2
    counts = " ".join(f"{k}={v}" for k, v in manifest["samples"].items())
    print(
        f"samples written to {cfg.output.dir}: {counts} dead_letters={manifest['dead_letters']} "
        f"({manifest['samples_per_second']} samples/s)"
    )
    if manifest["counters"]:
        print(counters_table(manifest["counters"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
