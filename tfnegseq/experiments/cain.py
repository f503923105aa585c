"""CAIN's experiments (paper `../shared/papers/002_bbf64e76a3eb835d.txt`, §5): studies of
settings x seeds on one dataset, each setting a set of `--set` overrides of a `cain`
config.

    python -m tfnegseq.experiments.cain --config configs/movielens_100k_cain.yaml \\
        --study overall [--seeds 0,1,2] [--settings "LAP,CAIN"] [--set k=v ...]

Studies (`--study`, repeatable; `--list` prints each study's settings):

| study | paper | what varies |
| --- | --- | --- |
| overall | Table 7 | LAP, SIM, ETA, SDIM, TWIN, CAIN w/o MSIA and PEG, CAIN w/o PEG, CAIN |
| context_length | Figure 5 | cl = -1 (no TCN), 0, 1, 3, 7, 15, 31 (one TCN layer, no PEG) |
| extractor | Table 1 | TCN, GRU, self-attention as the context extractor (one layer, no PEG) |
| backbone | Tables 2-3 | SIM, ETA, SDIM, TWIN, LAP raw, with one TCN layer, with 4-layer MSIA |
| layers | Figure 6 | 1-6 TCN layers, every stride 1 (no PEG) |
| strides | Figure 7 | first-layer stride 1-4; later strides 1-6 (4 layers, no PEG) |
| peg | Tables 4-6 | PEG on none / first / later / all layers; inputs; replace / sum / concat |
| polarity | ours | CAIN with PBE or TAPF on the lifelong tokens |

Every run trains from the config (same data, epochs and optimizer for every setting) and
appends one record (study, setting, seed, AUC, GAUC, logloss, training examples/s,
seconds) to `docs/results/cain_<dataset>.json` as soon as it ends, so an interrupted
sweep resumes where it stopped (a (study, setting, seed) already recorded is skipped).
At the end it writes `cain_<dataset>.md` (mean ± std per study, Δ AUC against the
study's reference setting) and `cain_<dataset>.png` (one panel per study).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from tfnegseq.config import load_config
from tfnegseq.experiments import records
from tfnegseq.experiments.records import mean_std

NO_PEG = ["model.peg_layers=none"]
RAW = ["model.context=none", *NO_PEG]  # a lifelong attention on the raw items
ONE_TCN = ["model.context=tcn", "model.msia_layers=1", *NO_PEG]


def _attention(name: str) -> list[str]:
    return [f"model.major_attention={name}"]


STUDIES: dict[str, dict[str, list[str]]] = {
    "overall": {
        "LAP": RAW + _attention("lap"),
        "SIM": RAW + _attention("sim"),
        "ETA": RAW + _attention("eta"),
        "SDIM": RAW + _attention("sdim"),
        "TWIN": RAW + _attention("twin"),
        "CAIN w/o MSIA and PEG": ONE_TCN + _attention("lap"),
        "CAIN w/o PEG": ["model.context=tcn", "model.msia_layers=4", *NO_PEG,
                         *_attention("lap")],
        "CAIN": ["model.context=tcn", "model.msia_layers=4", "model.peg_layers=all",
                 *_attention("lap")],
    },
    "context_length": {
        "cl=-1 (no TCN)": RAW,
        **{f"cl={cl}": [*ONE_TCN, f"model.context_length={cl}"] for cl in (0, 1, 3, 7, 15, 31)},
    },
    "extractor": {
        "none": RAW,
        "TCN": ONE_TCN,
        "GRU": ["model.context=gru", "model.msia_layers=1", *NO_PEG],
        "self-attention": ["model.context=self_attention", "model.msia_layers=1", *NO_PEG],
    },
    "backbone": {
        f"{a.upper()} {how}": overrides + _attention(a)
        for a in ("sim", "eta", "sdim", "twin", "lap")
        for how, overrides in (("raw", RAW), ("+ TCN", ONE_TCN),
                               ("+ MSIA", ["model.context=tcn", "model.msia_layers=4",
                                           *NO_PEG]))
    },
    "layers": {
        f"{n} layer{'s' if n > 1 else ''}": ["model.context=tcn", f"model.msia_layers={n}",
                                             f"model.strides=[{','.join(['1'] * n)}]", *NO_PEG]
        for n in range(1, 7)
    },
    "strides": {
        **{f"first stride {s}": ["model.context=tcn", "model.msia_layers=4",
                                 f"model.strides=[{s},4,4,4]", *NO_PEG] for s in (1, 2, 3, 4)},
        **{f"later strides {s}": ["model.context=tcn", "model.msia_layers=4",
                                  f"model.strides=[1,{s},{s},{s}]", *NO_PEG]
           for s in (1, 2, 3, 4, 5, 6)},
    },
    "peg": {
        "no PEG": ["model.context=tcn", "model.msia_layers=4", *NO_PEG],
        "PEG first": ["model.context=tcn", "model.msia_layers=4", "model.peg_layers=first"],
        "PEG later": ["model.context=tcn", "model.msia_layers=4", "model.peg_layers=later"],
        "PEG all (replace)": ["model.context=tcn", "model.msia_layers=4",
                              "model.peg_layers=all"],
        "PEG all, sum": ["model.context=tcn", "model.msia_layers=4", "model.peg_layers=all",
                         "model.peg_aggregation=sum"],
        "PEG all, concat": ["model.context=tcn", "model.msia_layers=4", "model.peg_layers=all",
                            "model.peg_aggregation=concat"],
        "PEG all, user id only": ["model.context=tcn", "model.msia_layers=4",
                                  "model.peg_layers=all", "model.peg_inputs=[user_id]"],
    },
    "polarity": {
        "CAIN": [],
        "CAIN + PBE on lifelong": ["model.lifelong_polarity=pbe"],
        "CAIN + TAPF on lifelong": ["model.lifelong_polarity=tapf"],
    },
}
# The setting each study's Δ is measured against.
REFERENCE = {"overall": "LAP", "context_length": "cl=-1 (no TCN)", "extractor": "none",
             "backbone": "LAP raw", "layers": "1 layer", "strides": "first stride 1",
             "peg": "no PEG", "polarity": "CAIN"}
METRICS = ("auc", "gauc", "logloss", "train_examples_per_second")


def summarize(records_: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(study, setting) -> {metric: (mean, std, n)}."""
    return mean_std(records_, ("study", "setting"), METRICS)  # type: ignore[return-value]


def markdown(dataset: str, data: dict[str, Any]) -> str:
    summ = summarize(data["records"])
    lines = [
        f"# CAIN experiments on {dataset}",
        "",
        f"Command: `{data.get('command', '')}`  ",
        f"Seeds: {data.get('seeds')}; epochs: {data.get('epochs')}; machine: "
        f"{data.get('machine', {}).get('processor', '')} "
        f"({data.get('machine', {}).get('cores')} cores); "
        f"finished {data.get('finished', 'in progress')}.",
        "",
        "Mean ± sample std over the runs (a single run shows no ±). Δ AUC is against the "
        "study's reference setting (first row). Examples/s is training throughput on this "
        "machine, shared with other jobs: compare within a study only.",
    ]
    if data.get("notes"):
        lines += ["", str(data["notes"])]
    for study, settings in STUDIES.items():
        rows = [s for s in settings if (study, s) in summ]
        if not rows:
            continue
        ref = summ.get((study, REFERENCE[study]))
        lines += ["", f"## {study}", "",
                  "| Setting | AUC | Δ AUC | GAUC | logloss | examples/s | runs |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in rows:
            r = summ[(study, s)]

            def fmt(metric: str, digits: int = 4, r: dict[str, Any] = r) -> str:
                if metric not in r:
                    return "—"
                mean, std, n = r[metric]
                return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")

            delta = (f"{r['auc'][0] - ref['auc'][0]:+.4f}"
                     if ref and s != REFERENCE[study] else "—")
            lines.append(f"| {s} | {fmt('auc')} | {delta} | {fmt('gauc')} | "
                         f"{fmt('logloss')} | {fmt('train_examples_per_second', 0)} | "
                         f"{r['auc'][2]} |")
    return "\n".join(lines) + "\n"


def plot(dataset: str, data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarize(data["records"])
    studies = [s for s in STUDIES if any((s, x) in summ for x in STUDIES[s])]
    if not studies:
        return
    fig, axes = plt.subplots(1, len(studies), figsize=(max(5.5, 0.7 * max(
        len(STUDIES[s]) for s in studies)) * len(studies), 4.5), squeeze=False)
    for ax, study in zip(axes[0], studies, strict=True):
        names = [x for x in STUDIES[study] if (study, x) in summ]
        means = [summ[(study, x)]["auc"][0] for x in names]
        stds = [summ[(study, x)]["auc"][1] for x in names]
        xs = np.arange(len(names))
        colors = ["#9e9e9e" if x == REFERENCE[study] else "#1565c0" for x in names]
        ax.bar(xs, means, yerr=stds, capsize=4, color=colors)
        for xi, name in enumerate(names):
            seeds = [r["auc"] for r in data["records"]
                     if r["study"] == study and r["setting"] == name]
            ax.scatter([xi] * len(seeds), seeds, color="black", s=8, zorder=3)
            ax.text(xi, means[xi], f"{means[xi]:.4f}\nn={len(seeds)}", ha="center",
                    va="bottom", fontsize=7)
        spread = max(stds + [0.002])
        ax.set_ylim(min(means) - max(3 * spread, 0.01), max(means) + 3 * spread)
        ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test AUC (bars: mean ± std; dots: seeds)")
        ax.set_title(f"{dataset}: {study}")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tfnegseq.experiments.cain")
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--study", dest="studies", action="append", default=[],
                    help=f"one of {list(STUDIES)} (repeatable; default: overall)")
    ap.add_argument("--settings", default="",
                    help="comma-separated subset of the studies' settings (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--results-dir", default="docs/results")
    ap.add_argument("--runs-dir", default="runs/cain")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--list", action="store_true", help="print every study's settings")
    args = ap.parse_args(argv)
    if args.list:
        for study, settings in STUDIES.items():
            print(f"{study}: " + "; ".join(settings))
        return 0
    studies = args.studies or ["overall"]
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        ap.error(f"unknown study {unknown}; known: {list(STUDIES)}")
    wanted = [s for s in args.settings.split(",") if s]
    known = {x for s in studies for x in STUDIES[s]}
    if [s for s in wanted if s not in known]:
        ap.error(f"unknown setting(s) {[s for s in wanted if s not in known]} in studies "
                 f"{studies}; known: {sorted(known)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        ap.error(f"--seeds: comma-separated integers. Received: {args.seeds!r}")

    base = load_config(args.config, args.overrides)
    if base.model.kind != "cain":
        ap.error(f"{args.config}: model.kind must be 'cain'. Received: {base.model.kind!r}")
    for study in studies:  # every setting must load before the first run starts
        for setting, overrides in STUDIES[study].items():
            if not wanted or setting in wanted:
                load_config(args.config, args.overrides + overrides)
    dataset = base.name
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"cain_{dataset}.json")
    data = records.load(path)
    if not args.report_only:
        records.describe(data, "tfnegseq.experiments.cain", argv, dataset=dataset,
                         config=args.config, overrides=args.overrides, seeds=seeds,
                         epochs=base.train.epochs)
    done = {(r["study"], r["setting"], r["seed"]) for r in data["records"]}
    todo = [(study, setting, seed) for seed in seeds for study in studies
            for setting in STUDIES[study]
            if (not wanted or setting in wanted) and (study, setting, seed) not in done]
    for i, (study, setting, seed) in enumerate([] if args.report_only else todo, start=1):
        tag = "".join(c if c.isalnum() else "_" for c in f"{study}_{setting}_seed{seed}").lower()
        print(f"[{i}/{len(todo)}] {dataset} {study}: {setting}, seed {seed}", flush=True)
        cfg = load_config(args.config, args.overrides + STUDIES[study][setting] + [
            f"train.seed={seed}", "train.export=false",
            f"train.run_dir={args.runs_dir}/{dataset}/{tag}"])
        records.run_ctr(path, data, cfg, study=study, setting=setting, seed=seed)
    print(records.finish(path, data, bool(todo) and not args.report_only,
                         lambda d: markdown(dataset, d), lambda png: plot(dataset, data, png)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
