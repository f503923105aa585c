"""SINE's Tables 3-4 and Figure 4 structure on one dataset, both protocols.

    python -m tfnegseq.experiments.sine --config configs/movielens_100k_sine.yaml \
        [--seeds 0,1,2,3,4] [--settings table3|table4|k_sweep|NAME,...] [--set k=v ...]

Settings (each a set of `--set` overrides of the config; the config's own model is the
SINE default: K = 3, fusion eq. 13, the assignment with negatives):

    Popularity        each item's count of training positives (no training): the
                      floor NDCG@2 must be read against (about 2.4 candidates per user)
    Popularity (all events)
                      each item's count of training events, skips included: in the
                      paper's protocol, whose candidates are skips, this favours the
                      candidates (a lower floor; kept to show by how much)
    SASRec            positives only, L1 (BPR against a uniform item)
    SASRec-N          SASRec + L2: the passive negatives as training negatives
    GRU4Rec           one GRU over the positives, L1
    DIN               target attention over the positives, L1; it validates every 10
                      epochs with a patience of 10 validations (the others: 5 and
                      20, the same 100 epochs), because its full ranking costs O(L)
                      attention units per catalogue item: about 30 s a split on
                      MovieLens-100K on 2 cores, against about 1 s for SASRec
    SINE              the paper's model
    SINE w/o AF       mean of the sub-interests instead of the adaptive fusion (Table 4)
    SINE w/o NF       lambda_2 = 0 and the assignment without negatives (Table 4)
    SINE K=k          k = 1..10 (Figure 4); the config's own K is the SINE setting
                      itself: not run twice, its records drawn at that K

Every run trains with `tfnegseq.train` (early stopping on the validation split when the
config asks for it) and appends one record (setting, seed, both protocols' metrics,
best epoch, seconds) to `docs/results/sine_<dataset>.json` as soon as it ends, so an
interrupted sweep resumes where it stopped, and a run interrupted mid-training resumes
after its last finished epoch (`records.prepare_run_dir`). At the end it writes
`sine_<dataset>.md` (mean ± sample std) and `sine_<dataset>.png` (Table 3 bars, the K
sweep).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

import numpy as np

from tfnegseq.config import load_config
from tfnegseq.experiments import records

POPULARITY, POPULARITY_EVENTS = "Popularity", "Popularity (all events)"
SETTINGS: dict[str, list[str]] = {
    POPULARITY: [],
    POPULARITY_EVENTS: [],
    "SASRec": ["model.architecture=sasrec"],
    "SASRec-N": ["model.architecture=sasrec_n"],
    "GRU4Rec": ["model.architecture=gru4rec"],
    "DIN": ["model.architecture=din", "train.validate_every=10",
            "train.early_stopping_patience=10"],
    "SINE": ["model.architecture=sine"],
    "SINE w/o AF": ["model.architecture=sine", "model.fusion=mean"],
    "SINE w/o NF": ["model.architecture=sine", "model.lambda_2=0.0",
                    "model.assignment_uses_negatives=false"],
    **{f"SINE K={k}": ["model.architecture=sine", f"model.num_interests={k}"]
       for k in range(1, 11)},
}
GROUPS = {
    "table3": [POPULARITY, POPULARITY_EVENTS, "SASRec", "SASRec-N", "GRU4Rec", "DIN", "SINE"],
    "table4": ["SINE", "SINE w/o AF", "SINE w/o NF"],
    "k_sweep": [f"SINE K={k}" for k in range(1, 11)],
}
PAPER = ("auc", "gauc", "ndcg@2", "ndcg_no_cutoff")
PAPER_SELECT, FULL_SELECT = "auc", "ndcg@10"  # the validation metric each protocol uses
EPOCHS = ("paper_epoch", "full_epoch")
FULL = ("hr@10", "ndcg@10", "mrr")
METRICS = PAPER + FULL
LABELS = {"auc": "AUC", "gauc": "GAUC", "ndcg@2": "NDCG@2", "ndcg_no_cutoff": "NDCG (no cutoff)",
          "hr@10": "HR@10", "ndcg@10": "NDCG@10", "mrr": "MRR"}


def setting_names(spec: str) -> list[str]:
    """Group names and setting names, comma-separated -> settings, in order, once."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in GROUPS.get(part, [part] if part else []):
            if name not in out:
                out.append(name)
    return out


def training_positive_counts(data_dir: str) -> dict[int, int]:
    """Raw item id -> how often it is a training positive (p_1 .. p_n of each user's
    sample: the positives before the validation target; `tfnegseq.data.sequential`)."""
    import tensorflow as tf

    from tfnegseq import schema
    from tfnegseq.config import SamplesConfig
    from tfnegseq.data.input import record_batches
    from tfnegseq.data.sequential_input import SEQUENCES

    full = schema.parse_spec(SamplesConfig(task="sequential"))
    spec = {k: full[k] for k in ("seq_item_id", "seq_polarity", "valid_index")}
    counts: dict[int, int] = {}
    for serialized in record_batches(data_dir, SEQUENCES, 512).as_numpy_iterator():
        p = tf.io.parse_example(serialized, spec)
        for items, pol, k in zip(p["seq_item_id"].numpy(), p["seq_polarity"].numpy(),
                                 p["valid_index"].numpy(), strict=True):
            for item in items[:k][pol[:k] == 1].tolist():
                counts[item] = counts.get(item, 0) + 1
    return counts


def popularity_metrics(cfg: Any, events: bool = False) -> dict[str, Any]:
    """Both protocols for scores = the item's count of training positives (OOV items
    score 0), on `train.eval_split`, with the kind's metrics. `events`: count every
    training event instead (the vocabulary's count: skips too, so in the paper's
    protocol, whose candidates are skips, it favours the candidates)."""
    from tfnegseq import kinds
    from tfnegseq.data.input import FeatureProcessor
    from tfnegseq.data.vocab import read_vocab_file
    from tfnegseq.runs import samples_dir

    kind = kinds.get_kind(cfg.model.kind)
    data_dir = samples_dir(cfg)
    processor = FeatureProcessor.from_data_dir(data_dir, cfg)
    vocab = processor.vocabularies["item_id"]
    if events:
        ids, file_counts = read_vocab_file(os.path.join(data_dir, "vocab", "item_id.tsv"))
        count_of = dict(zip(ids.tolist(), file_counts.tolist(), strict=True))
    else:
        count_of = training_positive_counts(data_dir)
    rows = vocab.size
    start = 1 + vocab.oov_buckets
    counts = np.zeros(rows, np.float64)
    counts[start:] = [count_of.get(i, 0) for i in vocab.ids.tolist()]
    datasets = kind.make_datasets(cfg, data_dir, processor)
    assert datasets is not None, "the sequential kind makes its own datasets"
    _, eval_ds = datasets
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in (
        "target_score", "candidate_scores", "rank", "candidate_mask", "raw_user_id")}
    for batch in eval_ds.as_numpy_iterator():
        target = batch["target"]
        t_score = counts[target]
        outputs["target_score"].append(t_score)
        outputs["candidate_scores"].append(counts[batch["candidates"]])
        outputs["candidate_mask"].append(batch["candidate_mask"])
        outputs["raw_user_id"].append(batch["raw_user_id"])
        # full ranking, pessimistic ties: catalogue rows scoring >= the target, minus
        # the target's own row and the excluded rows
        catalogue = counts[start:]
        above = (catalogue[None, :] >= t_score[:, None]).astype(np.float64)
        cat_rows = np.arange(start, rows)
        for u in range(len(target)):
            excluded = np.isin(cat_rows, batch["exclude"][u]) | (cat_rows == target[u])
            above[u, excluded] = 0.0
        outputs["rank"].append(above.sum(axis=1))
    return kind.metrics({k: np.concatenate(v) for k, v in outputs.items()})


def sweep_alias(setting: str, default_k: int) -> str:
    """The setting whose runs stand for `setting`: "SINE K=<the config's K>" is "SINE"."""
    return "SINE" if setting == f"SINE K={default_k}" else setting


def with_k_alias(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The records, plus SINE's drawn again as "SINE K=<the config's K>" (the same
    configuration) unless that setting has runs of its own."""
    k = data.get("default_num_interests", 3)
    recs = data["records"]
    if any(r["setting"] == f"SINE K={k}" for r in recs):
        return recs
    return recs + [{**r, "setting": f"SINE K={k}"} for r in recs if r["setting"] == "SINE"]


def k_sweep_points(data: dict[str, Any]) -> tuple[list[int], list[int], dict[tuple[Any, ...], Any]]:
    """Figure 4's points: the K values with runs, the seeds every one of them ran at, and
    the mean ± std per K over those seeds only (so SINE's five seeds at the config's K
    are not drawn beside one seed of the other K). Without a seed they all share, every
    run counts (the seeds returned are then empty)."""
    recs = [r for r in with_k_alias(data) if r["setting"].startswith("SINE K=")]
    ks = sorted({int(r["setting"].split("=", 1)[1]) for r in recs})
    seed_sets = [{r["seed"] for r in recs if r["setting"] == f"SINE K={k}"} for k in ks]
    shared = sorted(set.intersection(*seed_sets)) if seed_sets else []
    chosen = [r for r in recs if r["seed"] in shared] if shared else recs
    return ks, shared, records.mean_std(chosen, ("setting",), METRICS)


def setting_config(config: str, overrides: list[str], setting: str, seed: int,
                   runs_dir: str, dataset: str) -> Any:
    """The config one run of `setting` at `seed` trains with (its run directory
    `<runs_dir>/<dataset>/<setting tag>_seed<seed>`, no export)."""
    tag = re.sub(r"[^a-z0-9_-]", "", setting.lower().replace(" ", "_"))
    return load_config(config, overrides + SETTINGS[setting] + [
        f"train.seed={seed}", "train.export=false",
        f"train.run_dir={runs_dir}/{dataset}/{tag}_seed{seed}"])


def markdown(dataset: str, data: dict[str, Any]) -> str:
    summ = records.mean_std(with_k_alias(data), ("setting",), METRICS + EPOCHS)
    lines = [
        f"# SINE experiments on {dataset}",
        "",
        f"Command: `{data.get('command', '')}`  ",
        f"Config: `{data.get('config')}` with {data.get('overrides') or 'no overrides'}; "
        f"seeds {records.recorded_seeds(data)}; machine: {data.get('machine', {}).get('processor', '')} "
        f"({data.get('machine', {}).get('cores')} cores); "
        + (f"finished {data['finished']}." if data.get("finished") else "still running."),
        *(["", f"**Note:** {data['notes']}"] if data.get("notes") else []),
        "",
        "Mean ± sample std over seeds (a single run: its value), evaluated on the test split (the last positive of "
        "each user). Paper protocol: the held-out positive against the passive negatives "
        "between the validation and the test positive (users with none count only in "
        "the pooled AUC); NDCG@2 with a true cutoff, and without (the official code's). "
        "Full ranking: against every catalogue item, the user's earlier positives "
        "excluded. Ties pessimistic. Model selection: training validates every "
        "`train.validate_every` epochs and stops on validation NDCG@10; the paper-protocol "
        "columns are the test metrics at the epoch of best validation AUC, the "
        "full-ranking columns at the epoch of best validation NDCG@10 (the two optima "
        "fall at different epochs: a model that ranks the catalogue better also ranks "
        "the skipped items, which come from the user's interests, higher).",
    ]
    for title, group in (("Table 3 structure: baselines", GROUPS["table3"]),
                         ("Table 4 structure: ablations", GROUPS["table4"]),
                         ("Figure 4 structure: number of sub-interests K (K = "
                          f"{data.get('default_num_interests', 3)}: the SINE runs)",
                          GROUPS["k_sweep"])):
        names = [s for s in group if (s,) in summ]
        if not names:
            continue
        lines += ["", f"## {title}", "",
                  "| Setting | " + " | ".join(LABELS[m] for m in METRICS)
                  + " | epochs (AUC / NDCG@10) | runs |",
                  "| --- |" + " --- |" * (len(METRICS) + 2)]
        for s in names:
            r = summ[(s,)]
            # one run has no spread: its value alone, not "± 0"
            cells = [("—" if m not in r else f"{r[m][0]:.4f} ± {r[m][1]:.4f}" if r[m][2] > 1
                      else f"{r[m][0]:.4f}") for m in METRICS]
            runs = max((v[2] for v in r.values()), default=0)
            epochs = " / ".join(f"{r[e][0]:.0f}" if e in r else "—" for e in EPOCHS)
            lines.append(f"| {s} | " + " | ".join(cells) + f" | {epochs} | {runs} |")
    return "\n".join(lines) + "\n"


def plot(dataset: str, data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = records.mean_std(with_k_alias(data), ("setting",), METRICS)
    names = [s for s in GROUPS["table3"] + GROUPS["table4"][1:] if (s,) in summ]
    ks, shared, ksumm = k_sweep_points(data)
    panels = [("paper protocol", ("auc", "gauc", "ndcg@2")), ("full ranking", FULL)]
    fig, axes = plt.subplots(1, 3 if ks else 2, figsize=(16 if ks else 11, 4.9))
    width = 0.8 / max(1, len(names))
    for ax, (title, metrics) in zip(axes, panels, strict=False):
        x = np.arange(len(metrics))
        for i, s in enumerate(names):
            means = [summ[(s,)].get(m, (np.nan, 0, 0))[0] for m in metrics]
            stds = [summ[(s,)].get(m, (0, 0, 0))[1] for m in metrics]
            runs = max(v[2] for v in summ[(s,)].values())
            ax.bar(x + (i - (len(names) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
                   label=f"{s} ({runs} run{'s' if runs > 1 else ''})")
        ax.set_xticks(x, [LABELS[m] for m in metrics])
        ax.set_title(f"{dataset}: {title}")
        ax.grid(axis="y", alpha=0.3)
        if title == "paper protocol":
            ax.set_ylim(0.45, 1.0)
    # one legend for the bar panels, below them: inside a panel it hid the tallest bars
    handles, labels = axes[0].get_legend_handles_labels()
    columns = max(1, min(5, len(labels)))
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    if ks:
        ax = axes[2]
        for m in ("auc", "gauc", "ndcg@2"):
            means = [ksumm[(f"SINE K={k}",)][m][0] for k in ks]
            stds = [ksumm[(f"SINE K={k}",)][m][1] for k in ks]
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=LABELS[m])
        ax.set_xlabel("number of sub-interests K")
        ax.set_xticks(ks)
        seeds = (f"seed{'s' if len(shared) > 1 else ''} {', '.join(map(str, shared))}"
                 if shared else "all runs")
        ax.set_title(f"{dataset}: SINE vs K (paper protocol, {seeds})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    rows = -(-len(labels) // columns)  # legend rows below the panels
    fig.tight_layout(rect=(0, 0.05 * rows, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tfnegseq.experiments.sine")
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--settings", default="table3,table4",
                    help=f"groups {list(GROUPS)} and/or setting names, comma-separated")
    ap.add_argument("--results-dir", default="docs/results")
    ap.add_argument("--runs-dir", default="runs/sine")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    settings = setting_names(args.settings)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown setting(s) {unknown}; known: {list(GROUPS)} or {list(SETTINGS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds: expected comma-separated integers. Received: {args.seeds!r}")

    import keras

    from tfnegseq.config import ConfigError
    from tfnegseq.provenance import versions
    from tfnegseq.train import run_config

    try:
        base = load_config(args.config, args.overrides)
    except ConfigError as e:
        ap.error(str(e))
    dataset = base.name
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"sine_{dataset}.json")
    data = records.load(path)
    if not args.report_only:  # a report keeps the sweep's own command and settings
        records.describe(data, "tfnegseq.experiments.sine", argv, dataset=dataset,
                         config=args.config, overrides=args.overrides, seeds=seeds,)
    default_k = int(getattr(base.model, "num_interests", 3))  # the sequential section's
    if not args.report_only:
        data["default_num_interests"] = default_k
    # the fingerprint each setting would run with now; records of another config (or of
    # an older code revision) move to "discarded_records", never averaged with new runs
    expected: dict[tuple[str, ...], str] = {}
    for s in {*(sweep_alias(x, default_k) for x in settings),
              *(r["setting"] for r in data["records"])}:
        try:
            expected[(s,)] = records.fingerprint(
                setting_config(args.config, args.overrides, s, 0, args.runs_dir, dataset))
        except (ConfigError, KeyError):
            expected[(s,)] = records.UNLOADABLE
    records.set_aside_stale(data, expected, ("setting",))
    done = {(r["setting"], r["seed"]) for r in data["records"]}
    # seed-major: an interrupted sweep has every setting at the first seeds; the
    # config's own K runs as "SINE" (once, whichever of the two names asked for it)
    todo = list(dict.fromkeys(
        (sweep_alias(s, default_k), seed) for seed in seeds for s in settings
        if (sweep_alias(s, default_k), seed) not in done))
    for i, (s, seed) in enumerate([] if args.report_only else todo, start=1):
        print(f"[{i}/{len(todo)}] {dataset} {s} seed={seed}", flush=True)
        cfg = setting_config(args.config, args.overrides, s, seed, args.runs_dir, dataset)
        records.check_unchanged(cfg, expected[(s,)], f"{s} seed {seed}")
        keras.backend.clear_session()
        if s in (POPULARITY, POPULARITY_EVENTS):
            m = {**popularity_metrics(cfg, events=s == POPULARITY_EVENTS), "seconds": 0.0}
        else:
            # an interrupted run of this fingerprint resumes (weights, optimizer and
            # validation state); anything else in its directory is removed
            records.prepare_run_dir(cfg)
            m = run_config(cfg, verbose=0)
        validation = m.get("validation") or {}
        selected = validation.get("selected") or {}
        # each protocol at its own best validation epoch (train.test_at_validation);
        # without it, the final model's test metrics for both
        paper = selected.get(PAPER_SELECT) or {}
        full = selected.get(FULL_SELECT) or {}
        data["records"].append({
            "setting": s, "seed": seed, "config_sha": expected[(s,)],
            **{k: (paper.get("test") or m).get(k) for k in PAPER},
            **{k: (full.get("test") or m).get(k) for k in FULL},
            "paper_epoch": paper.get("epoch"), "full_epoch": full.get("epoch"),
            "num_ranked_users": m.get("num_ranked_users"), "eval_users": m.get("eval_users"),
            "stopped_epoch": validation.get("stopped_epoch"),
            "train_examples_per_second": m.get("train_examples_per_second"),
            "seconds": m.get("seconds"),
            **({"resumed_from_epoch": m["resumed_from_epoch"]}
               if m.get("resumed_from_epoch") else {}),
        })
        data["versions"] = versions()
        records.save(path, data)
        r = data["records"][-1]
        print("    " + " ".join(f"{k}={r[k]:.4f}" for k in METRICS if r.get(k) is not None)
              + f" (epochs {r['paper_epoch']} / {r['full_epoch']}, {r['seconds']:.0f}s)",
              flush=True)
    print(records.finish(path, data, bool(todo) and not args.report_only,
                         lambda d: markdown(dataset, d), lambda png: plot(dataset, data, png)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
