"""Driver of the sample-building Beam job: options, pipeline, manifest and schema.

`python -m beam_jobs.build_samples --config CONFIG [--set k=v ...] [Beam options]`
calls `main`. Any argument the config parser does not know is passed to Beam, so
`--runner DataflowRunner --project P --region R --temp_location gs://... \
 --extra_package dist/tfnegseq-0.1.0-py3-none-any.whl` launches on Dataflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from tfnegseq.config import Config, add_config_args, load_config, require_source

log = logging.getLogger("tfnegseq.build_samples")

OUTPUT_SUBDIRS = ("train", "valid", "test", "sequences", "dead_letters", "vocab")


def _clear_previous(out_dir: str) -> None:
    """Removes shards of an earlier run so splits never mix runs."""
    from apache_beam.io.filesystems import FileSystems

    patterns = [FileSystems.join(out_dir, d, "*") for d in OUTPUT_SUBDIRS]
    patterns += [FileSystems.join(out_dir, n) for n in ("_stats.json", "manifest.json")]
    for pattern in patterns:
        for m in FileSystems.match([pattern])[0].metadata_list:
            FileSystems.delete([m.path])


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


def finalize(cfg: Config, seconds: float) -> dict[str, Any]:
    """Writes `manifest.json` and `schema.pbtxt` from the job's `_stats.json`.

    `dead_letters` counts every record of `dead_letters/*.jsonl`: refused rows and
    users whose sample building failed (`dead_letter_users` of them). `warnings` lists
    empty or tiny splits (`split_warnings`).
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


def run(cfg: Config, beam_args: list[str] | None = None) -> dict[str, Any]:
    """Runs the job (DirectRunner unless `beam_args` say otherwise); returns the manifest."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from tfnegseq.data.beam import BuildSamples, WriteOutputs
    from tfnegseq.data.sources import make_source

    require_source(cfg)
    options = PipelineOptions(beam_args or [])
    runner_name = options.view_as(StandardOptions).runner
    runner = direct_runner(options) if runner_name in (None, "DirectRunner") else None
    files = make_source(cfg.source).log_files()
    if not files:
        raise FileNotFoundError(f"source.path {cfg.source.path!r}: no log files found")
    _clear_previous(cfg.output.dir)
    log.info("building samples from %d file(s) into %s", len(files), cfg.output.dir)
    start = time.perf_counter()
    with beam.Pipeline(runner=runner, options=options) as p:
        outputs = (
            p
            | "ListFiles" >> beam.Create(list(enumerate(files)))
            | "Build" >> BuildSamples(cfg)
        )
        _ = outputs | "Write" >> WriteOutputs(cfg)
    return finalize(cfg, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.build_samples",
        description="Build leakage-free training samples (TFRecords) from raw logs with Beam.",
    )
    add_config_args(parser)
    args, beam_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(args.config, args.overrides)
    manifest = run(cfg, beam_args)
    counts = " ".join(f"{k}={v}" for k, v in manifest["samples"].items())
    print(
        f"samples written to {cfg.output.dir}: {counts} dead_letters={manifest['dead_letters']} "
        f"({manifest['samples_per_second']} samples/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
