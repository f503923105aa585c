"""Study sweeps shared by the experiment CLIs: settings x (backbones) x seeds on one
dataset, each setting a list of `--set` overrides of one config.

A `Studies` names its studies (`{study: {setting: overrides}}`), each study's reference
setting (the row Δ AUC is measured against), optionally the backbones every setting runs
on (`model.backbone`, with per-backbone overrides) and, for studies over a number
(a ratio, a length), each setting's x value for a line plot. `run(spec, argv)` is a
whole CLI:

- every setting loads as a config before the first run (a setting the data cannot
  hold, e.g. a length beyond `samples.max_history`, is skipped with a note when
  `spec.skip_invalid`, else refused);
- each run appends one record (study, [backbone,] setting, seed, config_sha, AUC, GAUC,
  logloss, examples/s, seconds) to `<results-dir>/<prefix>_<dataset>.json` as soon as it
  ends; a run counts as done only when its `config_sha` (`records.fingerprint`) is the
  config the sweep would run now, and records of another config move to
  `discarded_records` (kept, never reported or resumed); a setting whose config and seed
  another study already ran (one model under two names, e.g. the ratio sweep's r = 0.5
  and the ablation's full TAPF) gets a copy of that record (`copied_from`) instead of a
  second training;
- `--reanalyse` recomputes `after_run` (e.g. the analyses) of the selected recorded
  runs from the models they saved under `--runs-dir` and updates their records (after
  the analysis code changed; a run whose model is gone keeps its record as it is);
- the end writes `<prefix>_<dataset>.md` (mean ± std, Δ AUC against the reference) and
  `.png` (bars per study, or AUC against x for numeric studies, one line per backbone
  and series).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from tfnegseq.config import ConfigError, load_config
from tfnegseq.data.manifest import read_manifest
from tfnegseq.experiments import records
from tfnegseq.experiments.records import mean_std
from tfnegseq.runs import load_run

METRICS = ("auc", "gauc", "logloss", "train_examples_per_second")


@dataclasses.dataclass
class Studies:
    prog: str
    prefix: str
    kind: str
    studies: dict[str, dict[str, list[str]]]
    reference: dict[str, str]
    default_studies: tuple[str, ...]
    backbones: tuple[str, ...] = ()
    default_backbones: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    backbone_overrides: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    # study -> setting -> (series name, x value): numeric studies plot AUC against x
    numeric: dict[str, dict[str, tuple[str, float]]] = dataclasses.field(default_factory=dict)
    skip_invalid: bool = False
    title: str = "Experiments"
    # extra markdown after a study's table: (spec, study, summary, backbone, data) -> lines
    extra: Callable[..., list[str]] | None = None
    # more fields of a finished run's record, from its config (e.g. the §4.5 analyses of
    # the saved model): cfg -> {field: JSON value}
    after_run: Callable[[Any], dict[str, Any]] | None = None
    # more figures beside the report: (spec, dataset, data, path stem) -> None
    extra_plot: Callable[..., None] | None = None

    @property
    def group(self) -> tuple[str, ...]:
        return ("study", "backbone", "setting") if self.backbones else ("study", "setting")


def split_names(text: str, known: set[str]) -> list[str]:
    """A comma-separated list of setting names, some of which hold commas themselves
    ("PEG all, sum"): at each point the longest run of pieces that is a known name is
    taken; a piece no known name starts with is kept alone (the caller reports it)."""
    parts, out, i = text.split(","), [], 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            name = ",".join(parts[i:j]).strip()
            if name in known:
                out.append(name)
                i = j
                break
        else:
            if parts[i].strip():
                out.append(parts[i].strip())
            i += 1
    return out


def placeholders(base: Any) -> dict[str, Any]:
    """What a setting's override may name in braces, from the sweep's base config:
    `{output_dir}` (its samples directory, `output.dir`), `{half_length}` (floor(L / 2),
    the negative slots of a mixed sequence at r = 0.5) and `{item_features}` (the
    `samples.item_features` list, as `[a,b]`)."""
    return {"output_dir": base.output.dir, "half_length": base.model.sequence_length // 2,
            "item_features": "[" + ",".join(base.samples.item_features) + "]"}


def ensure_samples(cfg: Any, base: Any) -> None:
    """Builds a setting's own samples (the Beam job on DirectRunner) when the setting
    moves `output.dir` away from the sweep's and nothing is there yet (e.g. the
    negative ablation's samples with `samples.negative_history: random`)."""
    if cfg.output.dir == base.output.dir or (cfg.train.data_dir
                                              and cfg.train.data_dir != cfg.output.dir):
        return
    if read_manifest(cfg.output.dir) is not None:
        return
    from tfnegseq.data import job

    print(f"building this setting's samples in {cfg.output.dir} (Beam, DirectRunner)",
          flush=True)
    job.run(cfg)


def reanalyse(spec: Studies, data: dict[str, Any], path: str,
              expected: dict[tuple[str, ...], str], studies: list[str], seeds: list[int],
              run_config: Callable[..., Any]) -> None:
    """`--reanalyse`: `spec.after_run` again for each recorded run of the selected
    studies, keys and seeds whose saved model (`model.keras` in its run directory) is
    still there; saves after each. Prints what it skipped."""
    assert spec.after_run is not None
    chosen = [r for r in data["records"] if r["seed"] in seeds and r["study"] in studies
              and r.get("config_sha") is not None
              and r["config_sha"] == expected.get(tuple(r.get(k) for k in spec.group))]
    missing = other = 0
    for i, r in enumerate(chosen, start=1):
        cfg = run_config(r["study"], r.get("backbone"), r["setting"], r["seed"])
        if not os.path.exists(os.path.join(cfg.train.run_dir, "model.keras")):
            missing += 1
            continue
        # the directory may hold a later run of another config under the same name
        # (e.g. the same study with other `--set` overrides): analyse only the record's
        try:
            trained = records.fingerprint(load_run(cfg.train.run_dir)[0])
        except (OSError, ConfigError, ValueError):
            trained = None
        if trained != r["config_sha"]:
            other += 1
            continue
        print(f"[reanalyse {i}/{len(chosen)}] {r['study']}: "
              f"{r.get('backbone') + ', ' if r.get('backbone') else ''}{r['setting']}, "
              f"seed {r['seed']}", flush=True)
        r.update(spec.after_run(cfg))
        records.save(path, data)
    if missing:
        print(f"reanalyse: {missing} of {len(chosen)} recorded runs have no saved model "
              f"under their run directory; their records are unchanged", flush=True)
    if other:
        print(f"reanalyse: {other} of {len(chosen)} recorded runs' directories hold a model "
              f"of another config (metrics.json); their records are unchanged", flush=True)


def _key(spec: Studies, study: str, backbone: str | None, setting: str) -> tuple[str, ...]:
    return (study, backbone, setting) if spec.backbones else (study, setting)  # type: ignore[return-value]


def summarize(spec: Studies, data: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    return mean_std(data["records"], spec.group, METRICS)  # type: ignore[return-value]


def _fmt(r: dict[str, Any], metric: str, digits: int = 4) -> str:
    if metric not in r:
        return "—"
    mean, std, n = r[metric]
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def markdown(spec: Studies, dataset: str, data: dict[str, Any]) -> str:
    summ = summarize(spec, data)
    machine = data.get("machine", {})
    lines = [
        f"# {spec.title} on {dataset}", "",
        f"Command: `{data.get('command', '')}`  ",
        f"Seeds: {records.recorded_seeds(data)}; epochs: {data.get('epochs')}; machine: "
        f"{machine.get('processor', '')} ({machine.get('cores')} cores); "
        f"finished {data.get('finished', 'in progress')}.", "",
        "Mean ± sample std over the runs (a single run shows no ±). Δ AUC is against the "
        "study's reference setting (marked *), Δ % the same relative to the reference's "
        "AUC. Examples/s is training throughput on a shared machine: compare within a "
        "study only.",
    ]
    if data.get("notes"):
        lines += ["", str(data["notes"])]
    for study, settings in spec.studies.items():
        for backbone in (spec.backbones or (None,)):
            rows = [s for s in settings if _key(spec, study, backbone, s) in summ]
            if not rows:
                continue
            ref = summ.get(_key(spec, study, backbone, spec.reference[study]))
            title = f"{study}" + (f", {backbone}" if backbone else "")
            lines += ["", f"## {title}", "",
                      "| Setting | AUC | Δ AUC | Δ % | GAUC | logloss | examples/s | runs |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for s in rows:
                r = summ[_key(spec, study, backbone, s)]
                is_ref = s == spec.reference[study]
                delta = f"{r['auc'][0] - ref['auc'][0]:+.4f}" if ref and not is_ref else "—"
                rel = (f"{100 * (r['auc'][0] - ref['auc'][0]) / ref['auc'][0]:+.2f}%"
                       if ref and not is_ref else "—")
                lines.append(f"| {s}{' *' if is_ref else ''} | {_fmt(r, 'auc')} | {delta} | "
                             f"{rel} | "
                             f"{_fmt(r, 'gauc')} | {_fmt(r, 'logloss')} | "
                             f"{_fmt(r, 'train_examples_per_second', 0)} | {r['auc'][2]} |")
            if spec.extra is not None:
                lines += spec.extra(spec, study, summ, backbone, data)
    return "\n".join(lines) + "\n"


def plot(spec: Studies, dataset: str, data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarize(spec, data)
    panels = [(study, b) for study in spec.studies for b in (spec.backbones or (None,))
              if any(_key(spec, study, b, s) in summ for s in spec.studies[study])]
    if not panels:
        return
    cols = min(3, len(panels))
    rows_ = -(-len(panels) // cols)
    widest = max(len(spec.studies[s]) for s, _ in panels)
    fig, axes = plt.subplots(rows_, cols, figsize=(max(5.5, 0.6 * widest) * cols, 4.6 * rows_),
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (study, backbone) in zip(axes.flat, panels, strict=False):
        names = [x for x in spec.studies[study] if _key(spec, study, backbone, x) in summ]
        title = f"{dataset}: {study}" + (f", {backbone}" if backbone else "")
        if study in spec.numeric:
            series: dict[str, list[tuple[float, float, float]]] = {}
            for name in names:
                label, x = spec.numeric[study][name]
                r = summ[_key(spec, study, backbone, name)]["auc"]
                series.setdefault(label, []).append((x, r[0], r[1]))
            for label, pts in series.items():
                pts.sort()
                xs, ms, ss = (np.array(v) for v in zip(*pts, strict=True))
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=label)
            ax.set_xlabel(study)
            ax.legend(fontsize=8)
        else:
            means = [summ[_key(spec, study, backbone, x)]["auc"][0] for x in names]
            stds = [summ[_key(spec, study, backbone, x)]["auc"][1] for x in names]
            xs = np.arange(len(names))
            colors = ["#9e9e9e" if x == spec.reference[study] else "#1565c0" for x in names]
            ax.bar(xs, means, yerr=stds, capsize=4, color=colors)
            lows, tops = [], []
            for xi, name in enumerate(names):
                seeds = [r["auc"] for r in data["records"] if r["study"] == study
                         and r["setting"] == name and r.get("backbone") == backbone]
                ax.scatter([xi] * len(seeds), seeds, color="black", s=8, zorder=3)
                # the label sits above the error bar and every seed's point
                top = max([means[xi] + stds[xi], *seeds])
                lows.append(min([means[xi] - stds[xi], *seeds]))
                tops.append(top)
                ax.annotate(f"{means[xi]:.4f}\nn={len(seeds)}", (xi, top), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", fontsize=7)
            spread = max(stds + [0.002])
            ax.set_ylim(min(lows) - max(2 * spread, 0.01), max(tops) + 4 * spread)
            ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test AUC (mean ± std)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def incomplete(spec: Studies, loadable: dict[tuple[str, ...], Any]) -> list[tuple[str, ...]]:
    """Keys of `loadable` at a numeric study's x value that some series of that study
    (and backbone) cannot run: the length-scaling fit and its ratio use only the lengths
    both series ran, so a run at a length only one of them reaches is wasted."""
    out: list[tuple[str, ...]] = []
    for study, points in spec.numeric.items():
        series = {name for name, _ in points.values()}
        for backbone in (spec.backbones or (None,)):
            xs: dict[str, set[float]] = {name: set() for name in series}
            for setting, (name, x) in points.items():
                if _key(spec, study, backbone, setting) in loadable:
                    xs[name].add(x)
            shared = set.intersection(*xs.values())
            out += [key for setting, (name, x) in points.items()
                    if (key := _key(spec, study, backbone, setting)) in loadable
                    and x not in shared]
    return out


def run(spec: Studies, argv: list[str] | None = None) -> int:
    """The CLI: parse `argv`, run what is not recorded yet, write the report."""
    ap = argparse.ArgumentParser(prog=f"python -m {spec.prog}")
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--study", dest="studies", action="append", default=[],
                    help=f"one of {list(spec.studies)} (repeatable; default: "
                         f"{', '.join(spec.default_studies)})")
    ap.add_argument("--settings", default="",
                    help="comma-separated subset of the studies' settings (default: all)")
    if spec.backbones:
        ap.add_argument("--backbones", default="",
                        help=f"comma-separated subset of {list(spec.backbones)} (default: "
                             "each study's own)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--results-dir", default="docs/results")
    ap.add_argument("--runs-dir", default=f"runs/{spec.prefix}")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--reanalyse", action="store_true",
                    help="recompute the selected recorded runs' analyses from their saved "
                         "models (--runs-dir), then run what is missing")
    ap.add_argument("--list", action="store_true", help="print every study's settings")
    args = ap.parse_args(argv)
    if args.list:
        for study, settings in spec.studies.items():
            print(f"{study}: " + "; ".join(settings))
        return 0
    studies = args.studies or list(spec.default_studies)
    unknown = [s for s in studies if s not in spec.studies]
    if unknown:
        ap.error(f"unknown study {unknown}; known: {list(spec.studies)}")
    known = {x for s in studies for x in spec.studies[s]}
    wanted = split_names(args.settings, known)
    if [s for s in wanted if s not in known]:
        ap.error(f"unknown setting(s) {[s for s in wanted if s not in known]} in studies "
                 f"{studies}; known: {sorted(known)}")
    chosen = [b for b in (getattr(args, "backbones", "") or "").split(",") if b]
    if [b for b in chosen if b not in spec.backbones]:
        ap.error(f"unknown backbone(s) {[b for b in chosen if b not in spec.backbones]}; "
                 f"known: {list(spec.backbones)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        ap.error(f"--seeds: comma-separated integers. Received: {args.seeds!r}")

    base = load_config(args.config, args.overrides)
    if base.model.kind != spec.kind:
        ap.error(f"{args.config}: model.kind must be {spec.kind!r}. "
                 f"Received: {base.model.kind!r}")

    def backbones_of(study: str) -> list[str | None]:
        if not spec.backbones:
            return [None]
        return list(chosen or spec.default_backbones.get(study, spec.backbones))

    def run_config(study: str, backbone: str | None, setting: str, seed: int) -> Any:
        tag = "".join(c if c.isalnum() else "_"
                      for c in f"{study}_{backbone or ''}_{setting}_seed{seed}").lower()
        extra = ([f"model.backbone={backbone}", *spec.backbone_overrides.get(backbone, [])]
                 if backbone else [])
        own = [o.format(**placeholders(base)) for o in spec.studies[study][setting]]
        moved = [o.split("=", 1)[1] for o in own if o.startswith("output.dir=")]
        if moved and base.train.data_dir:  # the setting's own samples, not the sweep's
            own.append(f"train.data_dir={moved[-1]}")
        return load_config(args.config, args.overrides + extra + own + records.SWEEP_OVERRIDES
                           + [f"train.seed={seed}", "train.export=false",
                              f"train.run_dir={args.runs_dir}/{base.name}/{tag}"])

    # every setting loads before the first run; the fingerprints of what would run now
    loadable: dict[tuple[str, ...], str] = {}
    for study in studies:
        for backbone in backbones_of(study):
            for setting in spec.studies[study]:
                try:
                    loadable[_key(spec, study, backbone, setting)] = records.fingerprint(
                        run_config(study, backbone, setting, 0))
                except ConfigError as e:
                    if wanted and setting not in wanted:
                        continue  # a setting this call does not run need not load
                    if not spec.skip_invalid:
                        raise
                    print(f"skipped {study} / {backbone or '-'} / {setting}: {e}",
                          flush=True)
    for key in incomplete(spec, loadable):  # a numeric x runs only where every series can
        if not wanted or key[-1] in wanted:
            print(f"skipped {' / '.join(k or '-' for k in key)}: not every series of the "
                  "study can run at this value, and the comparisons use the values all "
                  "series share", flush=True)
        del loadable[key]
    expected = {k: v for k, v in loadable.items() if not wanted or k[-1] in wanted}
    dataset = base.name
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"{spec.prefix}_{dataset}.json")
    data = records.load(path)
    for r in data["records"]:  # fingerprints of recorded keys this call does not run
        key = tuple(r.get(k) for k in spec.group)
        if key not in expected and r.get("config_sha"):
            try:
                expected[key] = records.fingerprint(
                    run_config(r["study"], r.get("backbone"), r["setting"], 0))
            except (ConfigError, KeyError):
                # a setting this sweep's config cannot run (or no longer names) is not
                # what the sweep would run now: set aside, never reported beside it
                expected[key] = records.UNLOADABLE
    records.set_aside_stale(data, expected, spec.group)
    if not args.report_only:
        records.describe(data, spec.prog, argv, dataset=dataset, config=args.config,
                         overrides=args.overrides, seeds=seeds, epochs=base.train.epochs)
    if args.reanalyse and spec.after_run is not None and not args.report_only:
        reanalyse(spec, data, path, expected, studies, seeds, run_config)
    done = {(*(r.get(k) for k in spec.group), r["seed"]) for r in data["records"]}
    todo = [(study, backbone, setting, seed) for seed in seeds for study in studies
            for backbone in backbones_of(study) for setting in spec.studies[study]
            if _key(spec, study, backbone, setting) in expected
            and (*_key(spec, study, backbone, setting), seed) not in done]
    # a setting of one study may be another study's model (e.g. the ratio sweep's r = 0.5
    # is the ablation's full TAPF): a recorded run of the same config and seed is copied
    # under the new key instead of training the same model again
    by_config = {(r["config_sha"], r["seed"]): r for r in data["records"]
                 if r.get("config_sha")}
    for i, (study, backbone, setting, seed) in enumerate([] if args.report_only else todo,
                                                          start=1):
        where = f"{study}: {backbone + ', ' if backbone else ''}{setting}, seed {seed}"
        print(f"[{i}/{len(todo)}] {dataset} {where}", flush=True)
        fields = {"study": study, "setting": setting, "seed": seed,
                  "config_sha": expected[_key(spec, study, backbone, setting)]}
        if backbone:
            fields["backbone"] = backbone
        twin = by_config.get((fields["config_sha"], seed))
        if twin is not None:
            source = f"{twin['study']} / {twin['setting']}"
            data["records"].append({**{k: v for k, v in twin.items() if k != "copied_from"},
                                    **fields, "copied_from": twin.get("copied_from", source)})
            records.save(path, data)
            print(f"    the same config and seed as {source}: its record copied", flush=True)
            continue
        cfg = run_config(study, backbone, setting, seed)
        records.check_unchanged(cfg, fields["config_sha"], where)
        ensure_samples(cfg, base)
        records.run_ctr(path, data, cfg, **fields)
        by_config[(fields["config_sha"], seed)] = data["records"][-1]
        if spec.after_run is not None:
            try:
                data["records"][-1].update(spec.after_run(cfg))
            except BaseException:  # the run counts as done only with its analysis
                data["records"].pop()
                records.save(path, data)
                raise
            records.save(path, data)

    def figures(png: str) -> None:
        plot(spec, dataset, data, png)
        if spec.extra_plot is not None:
            spec.extra_plot(spec, dataset, data, os.path.splitext(png)[0])

    print(records.finish(path, data, bool(todo) and not args.report_only,
                         lambda d: markdown(spec, dataset, d), figures))
    return 0
