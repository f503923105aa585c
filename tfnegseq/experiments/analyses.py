"""The mixed-polarity paper's §4.5 analyses and Table 5 of one trained CTR run
(`../shared/papers/000_5e33a33d50eec3ce.txt`): per-row scores and attention over the
evaluation split, then the subsets the paper reads.

    fields = analyse_run(cfg)      # cfg.train.run_dir holds model.keras (a finished run)

returns (JSON-ready; a subset with one label class has `auc` None):

| key | paper | what |
| --- | --- | --- |
| `full_history` | Table 5 | per cutoff c in `CUTOFFS` up to `samples.max_history` (keys "10", "20", ...): AUC / GAUC / n of the rows whose positive history holds at least c events. The paper's subset is c = 100 for every L (Pos Seq and Mix Seq both fully filled at L <= 100); one fixed c across the runs of a length sweep keeps the population fixed |
| `activity` | Figure 6 | AUC / n per bucket of the row's positive history length (`ACTIVITY`; the lists hold at most `samples.max_history`) |
| `cold`, `warm` | Figure 7 | AUC / n of rows whose target item has no row of its own in the item vocabulary (an out-of-vocabulary bucket: never a training-split item with the default `vocab`), and of the others |
| `attention` | §4.5.1, Table 6, Figures 5 and 9 | the mean share of attention on positive tokens (`CtrModel.attention_share`), over all rows and per label, and the polarity gap E[a+ | y=1] - E[a+ | y=0]; beside them the same for the share of positive tokens among the tokens attended (`positive_tokens*`, `token_gap`: what a+ and the gap would be under uniform attention, so a+ minus it is what the attention itself adds); None where the backbone has no such attention (`has_attention_share`) or the sequence holds one polarity (r = 0 or 1) |

The study runner (`tfnegseq.experiments.studies`) adds these to each run's record as
`analysis` (`Studies.after_run`). Runs the saved model eagerly batch by batch (the
analysis pass is one pass over the evaluation split; its AUC equals the run's
`metrics.json`, tested).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tfnegseq.budget import polarity_budget

# positive-history-length buckets [low, high): 0-1, 2-9, 10-39, 40-99, 100+
ACTIVITY = ((0, 2), (2, 10), (10, 40), (40, 100), (100, None))
# Table 5's minimum positive history lengths (those up to samples.max_history are kept)
CUTOFFS = (10, 20, 50, 100, 200, 300, 500)


def bucket_name(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else f"{low}-{high - 1}"


def subset_metrics(labels: np.ndarray, probs: np.ndarray, users: np.ndarray,
                   keep: np.ndarray) -> dict[str, Any]:
    """AUC and GAUC of the rows in `keep` (None when they hold one label class), n."""
    from tfnegseq import metrics

    y, p, u = labels[keep], probs[keep], users[keep]
    both = len(y) > 0 and 0 < y.sum() < len(y)
    out: dict[str, Any] = {"n": int(keep.sum()), "positive_rate":
                           float(y.mean()) if len(y) else None}
    out["auc"] = float(metrics.auc(y, p)) if both else None
    g = float(metrics.gauc(u, y, p)) if both else float("nan")
    out["gauc"] = g if np.isfinite(g) else None  # NaN: no user with both classes
    return out


def collect_rows(model: Any, dataset: Any, oov_buckets: int) -> dict[str, np.ndarray]:
    """Per evaluation row: label, probability, raw user id, positive history length,
    cold target (item row 1..oov_buckets) and the attention share on positive tokens
    (NaN where undefined: rows without tokens, or a backbone without the attention),
    and the share of positive tokens among the tokens that attention covers (`tokens`,
    NaN likewise)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("label", "probability", "user", "pos_length",
                                           "cold", "share", "tokens")}
    shares = bool(getattr(model, "has_attention_share", False))
    for features, label in dataset.as_numpy_iterator():
        inputs = {k: v for k, v in features.items() if not k.startswith("raw_")}
        parts["label"].append(np.asarray(label, np.float64).reshape(-1))
        parts["probability"].append(
            np.asarray(model(inputs)["probability"], np.float64).reshape(-1))
        parts["user"].append(np.asarray(features["raw_user_id"]).reshape(-1))
        parts["pos_length"].append((np.asarray(features["pos_item_id"]) > 0).sum(axis=1))
        item = np.asarray(features["item_id"]).reshape(-1)
        parts["cold"].append((item >= 1) & (item <= oov_buckets))
        if shares:
            share, tokens = model.attention_share(inputs, return_token_share=True)
            parts["share"].append(np.asarray(share, np.float64))
            parts["tokens"].append(np.asarray(tokens, np.float64))
        else:
            parts["share"].append(np.full(len(item), np.nan))
            parts["tokens"].append(np.full(len(item), np.nan))
    return {k: np.concatenate(v) for k, v in parts.items()}


def summarize_rows(rows: dict[str, np.ndarray], max_history: int,
                   both_polarities: bool = True) -> dict[str, Any]:
    """The analysis fields (module docstring) of `collect_rows`' table, for samples
    whose history lists hold at most `max_history` events. `both_polarities` False (a
    sequence budget of one polarity, r = 0 or 1): no attention fields (the share is 0
    or 1 on every row, the gap 0 by construction)."""
    y, p, u = rows["label"], rows["probability"], rows["user"]
    everything = np.ones(len(y), bool)
    out: dict[str, Any] = {
        "all": subset_metrics(y, p, u, everything),
        "full_history": {str(c): subset_metrics(y, p, u, rows["pos_length"] >= c)
                         for c in CUTOFFS if c <= max_history},
        "activity": {bucket_name(lo, hi): subset_metrics(
            y, p, u, (rows["pos_length"] >= lo) & (True if hi is None
                                                    else rows["pos_length"] < hi))
            for lo, hi in ACTIVITY},
        "cold": subset_metrics(y, p, u, rows["cold"]),
        "warm": subset_metrics(y, p, u, ~rows["cold"]),
        "attention": None,
    }
    share = rows["share"]
    tokens = rows.get("tokens", np.full(len(y), np.nan))
    ok = np.isfinite(share) & np.isfinite(tokens)
    if ok.any() and both_polarities:
        def mean(values: np.ndarray, mask: np.ndarray) -> float | None:
            return float(values[mask & ok].mean()) if (mask & ok).any() else None

        def gap(values: np.ndarray) -> float | None:
            pos, neg = mean(values, y == 1), mean(values, y == 0)
            return None if pos is None or neg is None else pos - neg
        out["attention"] = {
            "positive_share": mean(share, everything),
            "positive_share_clicked": mean(share, y == 1),
            "positive_share_not_clicked": mean(share, y == 0),
            "gap": gap(share),
            "positive_tokens": mean(tokens, everything),
            "positive_tokens_clicked": mean(tokens, y == 1),
            "positive_tokens_not_clicked": mean(tokens, y == 0),
            "token_gap": gap(tokens),
            "rows": int(ok.sum()),
        }
    return out


def analyse_run(cfg: Any) -> dict[str, Any]:
    """The analysis fields of the finished run at `cfg.train.run_dir` (its model.keras,
    evaluated on `cfg.train.eval_split` of the run's samples)."""
    import keras

    import tfnegseq.models  # noqa: F401  (registers CtrModel for load_model)
    from tfnegseq.data.input import FeatureProcessor, make_dataset
    from tfnegseq.runs import samples_dir

    data_dir = samples_dir(cfg)
    processor = FeatureProcessor.from_data_dir(data_dir, cfg)
    dataset = make_dataset(data_dir, cfg.train.eval_split, cfg, cfg.train.batch_size,
                           processor=processor, keep_raw_ids=True)
    model = keras.saving.load_model(os.path.join(cfg.train.run_dir, "model.keras"),
                                    compile=False)
    rows = collect_rows(model, dataset, processor.vocabularies["item_id"].oov_buckets)
    budget = polarity_budget(cfg.model.positive_ratio, cfg.model.sequence_length)
    return summarize_rows(rows, cfg.samples.max_history, both_polarities=min(budget) > 0)


def analysis_fields(cfg: Any) -> dict[str, Any]:
    """`{"analysis": analyse_run(cfg)}`: the record fields of `Studies.after_run`."""
    return {"analysis": analyse_run(cfg)}
