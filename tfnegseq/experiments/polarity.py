"""The mixed-polarity paper's studies beyond Table 2 (`../shared/papers/000_5e33a33d50eec3ce.txt`
§4.3-4.4): settings x backbones x seeds on one CTR dataset.

    python -m tfnegseq.experiments.polarity --config configs/movielens_100k.yaml \\
        --study ratio-sweep [--backbones din] [--seeds 0,1,2] [--set k=v ...]

| study | paper | what varies (Mix Seq + TAPF unless named) |
| --- | --- | --- |
| tapf-ablation | Table 3 | full TAPF; without target interaction, residual, polarity sign, gating, polarity embedding, target interaction and gating together; PB only (Mix Seq + PB) (default backbones: OneTrans as the paper, and DIN) |
| ratio-sweep | Figure 4 | positive ratio r = 0.0, 0.1, ..., 1.0 (default: DIN) |
| length-scaling | Table 4 / Figure 1 | L = 10, 20, 50, 100, 200, 300, 500 for Pos Seq and Mix Seq + TAPF, as far as `samples.max_history` holds them (longer ones are skipped with a note); a length runs only where both series can; the markdown adds the paper's slopes (Δ AUC from L = 10 to 100 and to the longest length, Mix / Pos ratio) and a least-squares slope against log10 L (default: every backbone) |
| construction | Table 7 | interleaved vs polarity-grouped concatenation vs the dual-stream encoder (`model.mode=dual`; default: OneTrans as the paper, DIN, Transformer) |
| negative-ablation | Figure 8 | Pos Seq; Mix Seq with the recent negatives, with items drawn from the catalogue ("random universe", `samples.negative_history=catalogue`), with negatives drawn from the user's whole past ("random history", `samples.negative_history=random`), and with random polarity labels (`model.polarity_labels=random`); the two with their own samples build them with the Beam job (DirectRunner) in `<output.dir>_neg_*` on first use (default: DIN) |

| analyses | §4.5, Figures 5-7 and 9 | Pos Seq, Mix Seq + PB, Mix Seq + TAPF (default: DIN, OneTrans as the paper) |

Every run of every study also records the analyses of its saved model
(`tfnegseq.experiments.analyses`: AUC by positive-history bucket, on cold and warm
target items, on the full-history subset, and the attention share on positive tokens
with the polarity gap), so the length-scaling report carries Table 5 (the slopes on the
full-sequence subset) and the ratio sweep Figure 5 (the gap against r); the analyses
figure is `polarity_<dataset>_analyses.png`.

TAPF sits on the input tokens in every setting (`model.tapf_position=input`), the
placement all five backbones share. Records, resume and reports:
`tfnegseq.experiments.studies`; results in `docs/results/polarity_<dataset>.{json,md,png}`.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from tfnegseq.experiments.analyses import ACTIVITY, analysis_fields, bucket_name
from tfnegseq.experiments.studies import Studies, run
from tfnegseq.experiments.table2 import BACKBONE_OVERRIDES, BACKBONES

TAPF = ["model.polarity=tapf", "model.tapf_position=input"]
MIX_TAPF = ["model.positive_ratio=0.5", *TAPF]
POS = ["model.positive_ratio=1.0", "model.polarity=none"]
LENGTHS = (10, 20, 50, 100, 200, 300, 500)
RATIOS = tuple(round(0.1 * i, 1) for i in range(11))
ABLATIONS = {
    "w/o target interaction": "tapf_target_interaction",
    "w/o residual": "tapf_residual",
    "w/o polarity sign": "tapf_polarity_sign",
    "w/o gating": "tapf_gating",
    "w/o polarity embedding": "tapf_polarity_embedding",
}

STUDIES: dict[str, dict[str, list[str]]] = {
    "tapf-ablation": {
        "full TAPF": MIX_TAPF,
        **{name: [*MIX_TAPF, f"model.{key}=false"] for name, key in ABLATIONS.items()},
        "w/o target interaction & gating": [*MIX_TAPF, "model.tapf_target_interaction=false",
                                            "model.tapf_gating=false"],
        "PB only": ["model.positive_ratio=0.5", "model.polarity=pbe"],
    },
    "ratio-sweep": {f"r={r:.1f}": [f"model.positive_ratio={r}", *TAPF] for r in RATIOS},
    "length-scaling": {
        f"{name} L={length}": [*overrides, f"model.sequence_length={length}"]
        for length in LENGTHS
        for name, overrides in (("Pos Seq", POS), ("Mix Seq + TAPF", MIX_TAPF))
    },
    "construction": {
        "interleaved": [*MIX_TAPF, "model.mode=interleaved"],
        "grouped": [*MIX_TAPF, "model.mode=grouped"],
        "dual-stream": [*MIX_TAPF, "model.mode=dual"],
    },
    "negative-ablation": {
        "Pos Seq": POS,
        "recent negatives": MIX_TAPF,
        # the same slots and times, items drawn from the catalogue (own samples)
        "random universe": [*MIX_TAPF, "samples.negative_history=catalogue",
                            "output.dir={output_dir}_neg_catalogue"],
        # floor(L / 2) negatives drawn from the user's whole past (own samples): the
        # model's floor((1 - r) L) negatives are then a uniform draw, not the latest
        "random history": [*MIX_TAPF, "samples.negative_history=random",
                           "samples.negative_history_size={half_length}",
                           "output.dir={output_dir}_neg_random"],
        "random polarity": [*MIX_TAPF, "model.polarity_labels=random"],
    },
    # §4.5: activity buckets, cold items, attention shares (every run records them;
    # this study is the three settings the paper compares)
    "analyses": {
        "Pos Seq": POS,
        "Mix Seq + PB": ["model.positive_ratio=0.5", "model.polarity=pbe"],
        "Mix Seq + TAPF": MIX_TAPF,
    },
}
REFERENCE = {"tapf-ablation": "full TAPF", "ratio-sweep": "r=1.0",
             "length-scaling": "Pos Seq L=100", "construction": "interleaved",
             "negative-ablation": "Pos Seq", "analyses": "Pos Seq"}
NUMERIC = {
    "ratio-sweep": {f"r={r:.1f}": ("Mix Seq + TAPF", r) for r in RATIOS},
    "length-scaling": {f"{name} L={length}": (name, float(length)) for length in LENGTHS
                       for name in ("Pos Seq", "Mix Seq + TAPF")},
}


SERIES = ("Pos Seq", "Mix Seq + TAPF")


def shared_fit(points: dict[str, dict[int, float]]) -> dict[str, tuple[float, int]]:
    """Least-squares slope against log10 L of each series in `points` (name -> {L:
    value}), over the lengths *every* series has (a slope over 10-200 against one over
    10-100 compares different ranges), and the number of lengths used."""
    common = sorted(set.intersection(*(set(v) for v in points.values()))) if points else []
    if len(common) < 2:
        return {}
    x = np.log10(np.array(common, np.float64))
    return {name: (float(np.polyfit(x, [v[length] for length in common], 1)[0]), len(common))
            for name, v in points.items()}


def endpoint_gains(points: dict[str, dict[int, float]]) -> dict[int, dict[str, float]]:
    """Table 4's slopes: each series' gain `value(L) - value(L0)` from the shortest
    length every series ran (L0, 10 in the paper) to 100 and to the longest length every
    series ran (the paper's Δ10→100 and Δ10→500) -> {L: {series: gain}}; lengths only
    one series ran are not used."""
    common = sorted(set.intersection(*(set(v) for v in points.values()))) if points else []
    if len(common) < 2:
        return {}
    ends = sorted({end for end in (100, common[-1]) if end in common and end > common[0]})
    return {end: {name: v[end] - v[common[0]] for name, v in points.items()} for end in ends}


def length_points(summ: dict[tuple[Any, ...], dict[str, Any]], backbone: str | None
                  ) -> dict[str, dict[int, float]]:
    """Mean test AUC of each series at each length it ran: {series: {L: AUC}}."""
    return {name: {length: summ[key]["auc"][0] for length in LENGTHS
                   if (key := ("length-scaling", backbone, f"{name} L={length}")) in summ}
            for name in SERIES}


def slopes(summ: dict[tuple[Any, ...], dict[str, Any]], backbone: str | None
           ) -> dict[str, tuple[float, int]]:
    """Least-squares slope of mean AUC against log10 L per series over their shared
    lengths (`shared_fit`), and the points used."""
    return shared_fit(length_points(summ, backbone))


def _slope_text(fitted: dict[str, tuple[float, int]], what: str) -> list[str]:
    if not fitted:
        return []
    text = (f"Slope of {what} per decade of L (least squares over the lengths both "
            "series ran): "
            + "; ".join(f"{n} {s:+.4f} ({k} lengths)" for n, (s, k) in fitted.items()))
    if len(fitted) == 2 and fitted["Pos Seq"][0] != 0:
        text += (f"; ratio Mix Seq + TAPF / Pos Seq "
                 f"{fitted['Mix Seq + TAPF'][0] / fitted['Pos Seq'][0]:.2f}")
    return ["", text + "."]


def _scaling_text(points: dict[str, dict[int, float]], what: str) -> list[str]:
    """The paper's reading (Δ from the shortest shared length to 100 and to the longest,
    Mix Seq + TAPF's over Pos Seq's), then a least-squares slope over every shared
    length."""
    lines: list[str] = []
    for end, gains in endpoint_gains(points).items():
        start = min(set.intersection(*(set(v) for v in points.values())))
        text = (f"Δ {what} from L = {start} to L = {end} (the paper's Table 4 / 5 slope): "
                + "; ".join(f"{n} {g:+.4f}" for n, g in gains.items()))
        if len(gains) == 2 and gains["Pos Seq"] != 0:
            text += (f"; ratio Mix Seq + TAPF / Pos Seq "
                     f"{gains['Mix Seq + TAPF'] / gains['Pos Seq']:.2f}")
        lines += ["", text + "."]
    return lines + _slope_text(shared_fit(points), what)


def analysed(data: dict[str, Any], study: str, backbone: str | None, setting: str
             ) -> list[dict[str, Any]]:
    """The `analysis` fields of a setting's runs."""
    return [r["analysis"] for r in data["records"] if r.get("analysis")
            and r["study"] == study and r.get("backbone") == backbone
            and r["setting"] == setting]


def amean(items: list[dict[str, Any]], *path: str) -> float | None:
    """Mean over runs of the value at `path` in each analysis (None values skipped)."""
    values = []
    for item in items:
        v: Any = item
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None:
            values.append(float(v))
    return float(np.mean(values)) if values else None


def _f(v: float | None, fmt: str = ".4f") -> str:
    return "—" if v is None else format(v, fmt)


def subset_cutoff(data: dict[str, Any], backbone: str | None) -> str | None:
    """Table 5's cutoff: 100 (the paper's) where the runs recorded it, else the largest
    cutoff every length-scaling run of `backbone` recorded."""
    runs = [a for s in STUDIES["length-scaling"]
            for a in analysed(data, "length-scaling", backbone, s)]
    common = set.intersection(*(set(a.get("full_history", {})) for a in runs)) if runs else set()
    if not common:
        return None
    return "100" if "100" in common else max(common, key=int)


def full_history_points(data: dict[str, Any], backbone: str | None, cutoff: str
                        ) -> dict[str, dict[int, float]]:
    """Table 5's points: the full-history subset's mean AUC (positive history >=
    `cutoff`, one subset for every L) of each series at each length up to `cutoff`, where
    both series fill every positive slot; beyond it Pos Seq pads again, the confound the
    subset removes."""
    points: dict[str, dict[int, float]] = {}
    for name in SERIES:
        points[name] = {}
        for length in LENGTHS:
            a = amean(analysed(data, "length-scaling", backbone, f"{name} L={length}"),
                      "full_history", cutoff, "auc")
            if a is not None and length <= int(cutoff):
                points[name][length] = a
    return points


def full_history_slopes(data: dict[str, Any], backbone: str | None, cutoff: str
                        ) -> dict[str, tuple[float, int]]:
    """Table 5: the least-squares slopes of `full_history_points` against log10 L."""
    return shared_fit(full_history_points(data, backbone, cutoff))


def _extra(spec: Studies, study: str, summ: dict[tuple[Any, ...], dict[str, Any]],
           backbone: str | None, data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if study == "length-scaling":
        lines += _scaling_text(length_points(summ, backbone), "mean AUC")
        rows = [(s, a) for s in STUDIES[study] if (a := analysed(data, study, backbone, s))]
        cut = subset_cutoff(data, backbone)
        if rows and cut is not None:
            lines += ["", f"Table 5, the full-sequence subset: the test rows whose positive "
                      f"history holds at least {cut} events, the same rows for every L "
                      f"(at L <= {cut} both settings fill every positive slot):",
                      "", "| Setting | AUC (subset) | rows | share of the test split |",
                      "| --- | --- | --- | --- |"]
            for s, a in rows:
                n, total = amean(a, "full_history", cut, "n"), amean(a, "all", "n")
                share = f"{n / total:.1%}" if n is not None and total else "—"
                lines.append(f"| {s} | {_f(amean(a, 'full_history', cut, 'auc'))} | "
                             f"{_f(n, '.0f')} | {share} |")
            lines += _scaling_text(full_history_points(data, backbone, cut),
                                   f"the subset's AUC (L <= {cut})")
        return lines
    rows = [(s, a) for s in STUDIES[study] if (a := analysed(data, study, backbone, s))]
    if not rows:
        return lines
    lines += ["", "Per-run analyses (`tfnegseq.experiments.analyses`), mean over runs: "
              "cold = target item never in the training split; a+ = share of the "
              "backbone's attention on positive tokens (DIN: of the absolute pooling "
              "weights; with random polarity labels, of the tokens labelled positive); "
              "tokens+ = share of positive tokens among those attended (a+ under uniform "
              "attention); a+ clicked / a+ unclicked = a+ on the rows with label 1 / 0 "
              "(Table 6); gap = their difference (§4.5.1), token gap the same of tokens+ "
              "(a gap the sequences' make-up alone gives).",
              "", "| Setting | AUC cold (rows) | AUC warm | a+ | a+ clicked | a+ unclicked | "
              "tokens+ | gap | token gap |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s, a in rows:
        lines.append(f"| {s} | {_f(amean(a, 'cold', 'auc'))} ({_f(amean(a, 'cold', 'n'), '.0f')})"
                     f" | {_f(amean(a, 'warm', 'auc'))} | "
                     f"{_f(amean(a, 'attention', 'positive_share'), '.3f')} | "
                     f"{_f(amean(a, 'attention', 'positive_share_clicked'), '.3f')} | "
                     f"{_f(amean(a, 'attention', 'positive_share_not_clicked'), '.3f')} | "
                     f"{_f(amean(a, 'attention', 'positive_tokens'), '.3f')} | "
                     f"{_f(amean(a, 'attention', 'gap'), '+.3f')} | "
                     f"{_f(amean(a, 'attention', 'token_gap'), '+.3f')} |")
    if study == "analyses":
        ref = dict(rows).get(REFERENCE[study])
        lines += ["", "AUC by positive history length (rows), and the gain over Pos Seq:", "",
                  "| bucket | " + " | ".join(s for s, _ in rows) + " |",
                  "| --- |" + " --- |" * len(rows)]
        for lo, hi in ACTIVITY:
            name = bucket_name(lo, hi)
            cells = []
            for s, a in rows:
                auc = amean(a, "activity", name, "auc")
                base = amean(ref, "activity", name, "auc") if ref else None
                gain = (f" ({auc - base:+.4f})" if auc is not None and base is not None
                        and s != REFERENCE[study] else "")
                cells.append(f"{_f(auc)}{gain}")
            n = amean(rows[0][1], "activity", name, "n")
            lines.append(f"| {name} ({_f(n, '.0f')}) | " + " | ".join(cells) + " |")
    return lines


def _extra_plot(spec: Studies, dataset: str, data: dict[str, Any], stem: str) -> None:
    """`<stem>_analyses.png`: per backbone of the `analyses` study, the AUC gain over
    Pos Seq by activity bucket (Figure 6), cold vs warm AUC (Figure 7) and the attention
    split (Figure 9); and the attention polarity gap against r (Figure 5) where the
    ratio sweep recorded it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, str | None]] = []
    for name in spec.backbones:
        if analysed(data, "analyses", name, "Pos Seq"):
            panels += [("activity", name), ("cold", name), ("share", name)]
        if any(analysed(data, "ratio-sweep", name, f"r={r:.1f}") for r in RATIOS):
            panels.append(("gap", name))
    if not panels:
        return
    cols = min(3, len(panels))
    rows_ = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5.6 * cols, 4.2 * rows_), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    mixes = ("Mix Seq + PB", "Mix Seq + TAPF")
    colors = {"Pos Seq": "#9e9e9e", "Mix Seq + PB": "#ef6c00", "Mix Seq + TAPF": "#1565c0"}
    for ax, (what, b) in zip(axes.flat, panels, strict=False):
        get = {s: analysed(data, "analyses", b, s) for s in STUDIES["analyses"]}
        if what == "activity":
            names = [bucket_name(lo, hi) for lo, hi in ACTIVITY]
            xs = np.arange(len(names))
            for i, s in enumerate(mixes):
                gains = [(amean(get[s], "activity", n, "auc") or np.nan)
                         - (amean(get["Pos Seq"], "activity", n, "auc") or np.nan) for n in names]
                ax.bar(xs + (i - 0.5) * 0.38, gains, 0.38, label=s, color=colors[s])
            counts = [amean(get["Pos Seq"], "activity", n, "n") for n in names]
            ax.set_xticks(xs, [f"{n}\n({_f(c, '.0f')} rows)" for n, c in
                               zip(names, counts, strict=True)], fontsize=8)
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xlabel("positive history length")
            ax.set_ylabel("AUC gain over Pos Seq")
            ax.set_title(f"{dataset}, {b}: gain by user activity (Fig. 6)")
            ax.legend(fontsize=8)
        elif what == "cold":
            xs = np.arange(2)
            for i, s in enumerate(STUDIES["analyses"]):
                vals = [amean(get[s], part, "auc") or np.nan for part in ("cold", "warm")]
                ax.bar(xs + (i - 1) * 0.27, vals, 0.27, label=s, color=colors[s])
            n = [amean(get["Pos Seq"], part, "n") for part in ("cold", "warm")]
            ax.set_xticks(xs, [f"cold items ({_f(n[0], '.0f')} rows)",
                               f"warm items ({_f(n[1], '.0f')} rows)"])
            if not n[0]:
                ax.text(0, 0.5, "no cold items\nin this split", ha="center", va="center",
                        transform=ax.get_xaxis_transform(), fontsize=9)
            ax.set_ylabel("test AUC")
            low = np.nanmin([amean(get[s], p, "auc") or np.nan for s in get
                             for p in ("cold", "warm")] + [1.0])
            ax.set_ylim(max(0.0, low - 0.05), None)
            ax.set_title(f"{dataset}, {b}: cold-start vs warm items (Fig. 7)")
            ax.legend(fontsize=8)
        elif what == "share":
            shares = [amean(get[s], "attention", "positive_share") for s in mixes]
            pos = np.array([np.nan if v is None else v for v in shares])
            ax.bar(mixes, pos, color="#1565c0", label="positive tokens")
            ax.bar(mixes, 1 - pos, bottom=pos, color="#ef6c00", label="negative tokens")
            for i, v in enumerate(pos):
                if np.isfinite(v):
                    ax.text(i, v / 2, f"{v:.1%}", ha="center", color="white")
                    ax.text(i, v + (1 - v) / 2, f"{1 - v:.1%}", ha="center", color="white")
            tokens = [amean(get[s], "attention", "positive_tokens") for s in mixes]
            for i, v in enumerate(tokens):
                if v is not None:
                    ax.hlines(v, i - 0.4, i + 0.4, colors="black", linestyles="--",
                              label="positive share of the tokens" if i == 0 else None)
            ax.set_ylim(0, 1.2)  # the legend sits above the bars, clear of the labels
            ax.set_yticks(np.linspace(0, 1, 6))
            ax.set_ylabel("share of attention")
            ax.set_title(f"{dataset}, {b}: attention split (Fig. 9)")
            ax.legend(fontsize=7, loc="upper center", ncol=3)
        else:
            for field, label, style in (("gap", "attention (a+)", "-"),
                                        ("token_gap", "tokens (uniform attention)", "--")):
                pts = [(r, g) for r in RATIOS[1:-1] if (g := amean(
                    analysed(data, "ratio-sweep", b, f"r={r:.1f}"), "attention", field))
                    is not None]
                if pts:
                    xs_, gs = zip(*pts, strict=True)
                    ax.plot(xs_, gs, marker="o", linestyle=style, label=label)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xlabel("positive ratio r")
            ax.set_ylabel("attention polarity gap")
            ax.set_title(f"{dataset}, {b}: polarity gap vs r (Fig. 5)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{stem}_analyses.png", dpi=110)
    plt.close(fig)


SPEC = Studies(
    prog="tfnegseq.experiments.polarity", prefix="polarity", kind="ctr", studies=STUDIES,
    reference=REFERENCE, default_studies=("tapf-ablation",), backbones=BACKBONES,
    default_backbones={"tapf-ablation": ("onetrans", "din"), "ratio-sweep": ("din",),
                       "construction": ("onetrans", "din", "transformer"),
                       "negative-ablation": ("din",), "analyses": ("din", "onetrans")},
    backbone_overrides=BACKBONE_OVERRIDES, numeric=NUMERIC, skip_invalid=True,
    title="Mixed-polarity studies", extra=_extra, after_run=analysis_fields,
    extra_plot=_extra_plot)


def main(argv: list[str] | None = None) -> int:
    return run(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
