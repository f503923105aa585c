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
| peg | Tables 4-6 | PEG on none / first / later / all layers; inputs (the user features, the user id, behavioural statistics, the most interacted item feature, groups together); replace / sum / concat |
| polarity | ours | CAIN with PBE or TAPF on the lifelong tokens |

Every run trains from the config (same data, epochs and optimizer for every setting) and
appends one record (study, setting, seed, config_sha, AUC, GAUC, logloss, training
examples/s, seconds) to `docs/results/cain_<dataset>.json` as soon as it ends, so an
interrupted sweep resumes where it stopped (`tfnegseq.experiments.studies`: a run of
another config than the sweep's now is set aside, not mixed in). At the end it writes
`cain_<dataset>.md` (mean ± std per study, Δ AUC against the study's reference setting)
and `cain_<dataset>.png` (one panel per study).
"""

from __future__ import annotations

import sys
from typing import Any

from tfnegseq.experiments.studies import Studies, run

NO_PEG = ["model.peg_layers=none"]
# samples whose lifelong lists carry every item feature (PEG's "most_interacted" input)
LIFE_ITEMS = ["samples.lifelong_item_features={item_features}",
              "output.dir={output_dir}_life_items"]
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
        "PEG all, behavioral": ["model.context=tcn", "model.msia_layers=4",
                                "model.peg_layers=all", "model.peg_inputs=[behavioral]"],
        "PEG all, demographic + behavioral": [
            "model.context=tcn", "model.msia_layers=4", "model.peg_layers=all",
            "model.peg_inputs=[demographic,behavioral]"],
        # the most frequent item feature among the lifelong positives: its samples carry
        # `life_item_<f>` lists, built once into their own directory
        "PEG all, most interacted": [
            "model.context=tcn", "model.msia_layers=4", "model.peg_layers=all",
            "model.peg_inputs=[most_interacted]", *LIFE_ITEMS],
        "PEG all, every group": [
            "model.context=tcn", "model.msia_layers=4", "model.peg_layers=all",
            "model.peg_inputs=[demographic,behavioral,most_interacted]", *LIFE_ITEMS],
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
BACKBONES = ("SIM", "ETA", "SDIM", "TWIN", "LAP")


def _paired(study: str, data: dict[str, Any]) -> list[str]:
    """Each setting's Δ AUC against the study's reference seed by seed (runs of one seed
    see the same batch order: the sweep sets `train.deterministic_input`), where both
    ran at two seeds or more: the mean ± std of the table hides whether a gap holds on
    every seed."""
    ref = REFERENCE[study]
    auc = {(r["setting"], r["seed"]): r["auc"] for r in data["records"]
           if r["study"] == study and r.get("auc") is not None}
    rows = []
    for setting in STUDIES[study]:
        seeds = sorted(s for (name, s) in auc if name == setting and (ref, s) in auc)
        if setting == ref or len(seeds) < 2:
            continue
        deltas = [auc[(setting, s)] - auc[(ref, s)] for s in seeds]
        rows.append(f"| {setting} | {', '.join(f'{d:+.4f}' for d in deltas)} "
                    f"({', '.join(map(str, seeds))}) | {sum(d > 0 for d in deltas)} of "
                    f"{len(deltas)} |")
    if not rows:
        return []
    return ["", f"Δ AUC against {ref}, seed by seed (the same seed trains on the same "
            "batch order):", "", "| setting | Δ AUC (seeds) | ahead on |",
            "| --- | --- | --- |", *rows]


def _extra(spec: Studies, study: str, summ: dict[tuple[Any, ...], dict[str, Any]],
           backbone: str | None, data: dict[str, Any]) -> list[str]:
    """Every study: the seed-by-seed Δ against its reference (`_paired`). Tables 2-3
    also read each backbone's TCN and MSIA rows against its own raw row (the table's Δ
    column is against LAP raw)."""
    paired = _paired(study, data)
    if study != "backbone":
        return paired
    lines = ["", "Each attention with one TCN layer and with MSIA, against the same "
             "attention on the raw items (Tables 2-3's comparison):", "",
             "| attention | raw AUC | + TCN (Δ) | + MSIA (Δ) |", "| --- | --- | --- | --- |"]
    rows = 0
    for name in BACKBONES:
        raw = summ.get(("backbone", f"{name} raw"), {}).get("auc")
        if raw is None:
            continue
        cells = []
        for how in ("+ TCN", "+ MSIA"):
            r = summ.get(("backbone", f"{name} {how}"), {}).get("auc")
            cells.append("—" if r is None else f"{r[0]:.4f} ({r[0] - raw[0]:+.4f})")
        lines.append(f"| {name} | {raw[0]:.4f} | {cells[0]} | {cells[1]} |")
        rows += 1
    return paired + (lines if rows else [])


SPEC = Studies(prog="tfnegseq.experiments.cain", prefix="cain", kind="cain",
               studies=STUDIES, reference=REFERENCE, default_studies=("overall",),
               title="CAIN experiments", extra=_extra)


def main(argv: list[str] | None = None) -> int:
    return run(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
