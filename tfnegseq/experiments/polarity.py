"""The mixed-polarity paper's studies beyond Table 2 (`../shared/papers/000_5e33a33d50eec3ce.txt`
§4.3-4.4): settings x backbones x seeds on one CTR dataset.

    python -m tfnegseq.experiments.polarity --config configs/movielens_100k.yaml \\
        --study ratio-sweep [--backbones din] [--seeds 0,1,2] [--set k=v ...]

| study | paper | what varies (Mix Seq + TAPF unless named) |
| --- | --- | --- |
| tapf-ablation | Table 3 | full TAPF; without target interaction, residual, polarity sign, gating, polarity embedding (default backbones: OneTrans as the paper, and DIN) |
| ratio-sweep | Figure 4 | positive ratio r = 0.0, 0.1, ..., 1.0 (default: DIN) |
| length-scaling | Table 4 / Figure 1 | L = 10, 20, 50, 100, 200, 300, 500 for Pos Seq and Mix Seq + TAPF, as far as `samples.max_history` holds them (longer ones are skipped with a note); the markdown adds each series' slope of AUC against log10 L and their ratio (default: every backbone) |
| construction | Table 7 | interleaved vs polarity-grouped concatenation (default: DIN, Transformer) |

TAPF sits on the input tokens in every setting (`model.tapf_position=input`), the
placement all five backbones share. Not built yet: Table 5 (the full-sequence test
subset), the dual-stream encoder of Table 7, the negative ablation of Figure 8 and the
analyses of §4.5 (issue 15 lists them). Records, resume and reports:
`tfnegseq.experiments.studies`; results in `docs/results/polarity_<dataset>.{json,md,png}`.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

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
    },
}
REFERENCE = {"tapf-ablation": "full TAPF", "ratio-sweep": "r=1.0",
             "length-scaling": "Pos Seq L=100", "construction": "interleaved"}
NUMERIC = {
    "ratio-sweep": {f"r={r:.1f}": ("Mix Seq + TAPF", r) for r in RATIOS},
    "length-scaling": {f"{name} L={length}": (name, float(length)) for length in LENGTHS
                       for name in ("Pos Seq", "Mix Seq + TAPF")},
}


def slopes(summ: dict[tuple[Any, ...], dict[str, Any]], backbone: str | None
           ) -> dict[str, tuple[float, int]]:
    """Least-squares slope of mean AUC against log10 L per series, and the points used."""
    out = {}
    for name in ("Pos Seq", "Mix Seq + TAPF"):
        pts = [(np.log10(length), summ[key]["auc"][0]) for length in LENGTHS
               if (key := ("length-scaling", backbone, f"{name} L={length}")) in summ]
        if len(pts) >= 2:
            x, y = np.array(pts).T
            out[name] = (float(np.polyfit(x, y, 1)[0]), len(pts))
    return out


def _extra(spec: Studies, study: str, summ: dict[tuple[Any, ...], dict[str, Any]],
           backbone: str | None) -> list[str]:
    if study != "length-scaling":
        return []
    fitted = slopes(summ, backbone)
    if not fitted:
        return []
    text = ("Slope of mean AUC per decade of L (least squares over the lengths run): "
            + "; ".join(f"{n} {s:+.4f} ({k} lengths)" for n, (s, k) in fitted.items()))
    if len(fitted) == 2 and fitted["Pos Seq"][0] != 0:
        text += (f"; ratio Mix Seq + TAPF / Pos Seq "
                 f"{fitted['Mix Seq + TAPF'][0] / fitted['Pos Seq'][0]:.2f}")
    return ["", text + "."]


SPEC = Studies(
    prog="tfnegseq.experiments.polarity", prefix="polarity", kind="ctr", studies=STUDIES,
    reference=REFERENCE, default_studies=("tapf-ablation",), backbones=BACKBONES,
    default_backbones={"tapf-ablation": ("onetrans", "din"), "ratio-sweep": ("din",),
                       "construction": ("din", "transformer")},
    backbone_overrides=BACKBONE_OVERRIDES, numeric=NUMERIC, skip_invalid=True,
    title="Mixed-polarity studies", extra=_extra)


def main(argv: list[str] | None = None) -> int:
    return run(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
