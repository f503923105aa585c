"""RecBole's SASRec on our exact MovieLens-100K sequential samples (external reference).

Not part of the package or of `make test`: it needs RecBole and PyTorch, installed in a
separate virtual environment (benchmarks/external/README.md). Two modes:

1. `--export-only` (run with the project's .venv: it reads the Beam job's TFRecords with
   TensorFlow and cross-checks the split against `tfnegseq.data.sequential.user_windows`)
   writes, under `--work-dir`:

   - `ml100k_pos/ml100k_pos.inter` (`user_id:token item_id:token timestamp:float`): per
     user the positives only, in order: the training positives (those of
     `seq[:valid_index]`), then the validation target `seq[valid_index]`, then the test
     target `test_item_id`; timestamp = the position in that list, so RecBole's
     leave-one-out split (`eval_args: {split: {LS: valid_and_test}, order: TO}`) holds
     out the same targets as ours;
   - `ml100k_pos/ml100k_pos.{train,valid,test}.inter` (`item_id_list:token_seq` prefix
     + `item_id:token` target, one row per target): the same split written out, read
     through RecBole's `benchmark_filename` (`--split benchmark`), which removes the
     one place where leave-one-out differs from ours (users with a single training
     positive, see `--split`);
   - `ml100k_pos/ml100k_pos.item` (`item_id:token`): the item vocabulary of the
     samples (the catalogue our full ranking scores: items seen only as passive
     negatives included), so RecBole ranks the same catalogue;
   - `export.json`: counts and every user's split, for the checks of mode 2.

2. Default (run with the RecBole venv): trains RecBole's SASRec once per `--loss` and
   `--seeds` value (`torch.set_num_threads(1)`), checks that the train / valid / test
   rows RecBole built equal the export (every user: prefix and target), and writes
   `--out-json` and `--out-md`.

Full ranking as ours: RecBole scores the whole catalogue; every earlier positive of the
user (not only the prefix of the most recent `--max-len`) is excluded from the ranking,
the target's own item kept, as our `exclude` (RecBole's sequential evaluation excludes
nothing by itself; `--no-exclude-history` keeps RecBole's own behaviour). MRR without cutoff is RecBole's MRR@K with K = the catalogue size.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

DATASET = "ml100k_pos"
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ export (TensorFlow)
def export(samples_dir: Path, work_dir: Path, max_len: int) -> dict:
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, str(REPO))
    from tfnegseq.data.sequential import user_windows

    files = sorted(glob.glob(str(samples_dir / "sequences" / "*.tfrecord.gz")))
    if not files:
        raise SystemExit(f"no sequences/*.tfrecord.gz under {samples_dir}")
    vocab_file = samples_dir / "vocab" / "item_id.tsv"
    catalogue = [line.split("\t")[0] for line in vocab_file.read_text().splitlines() if line]

    users = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feats = tf.train.Example.FromString(record.numpy()).features.feature
        ex = {
            k: np.asarray(v.int64_list.value, np.int64)
            for k, v in feats.items()
            if v.WhichOneof("kind") == "int64_list"
        }
        items, pol = ex["seq_item_id"], ex["seq_polarity"]
        k = int(ex["valid_index"][0])
        valid_item, test_item = int(ex["valid_item_id"][0]), int(ex["test_item_id"][0])
        assert items[k] == valid_item and pol[k] == 1
        train = [int(items[j]) for j in range(k) if pol[j] == 1]
        # the reference windows: same targets, same inputs (most recent max_len)
        w = user_windows(ex, max_len=max_len)
        pad = lambda a: [int(x) for x in a if x != -1]  # noqa: E731 (PAD_ID = -1)
        assert int(w["valid"]["target"]) == valid_item
        assert int(w["test"]["target"]) == test_item
        assert pad(w["valid"]["inputs"]) == train[-max_len:]
        assert pad(w["test"]["inputs"]) == (train + [valid_item])[-max_len:]
        assert pad(w["train"]["targets"]) == train[1:][-max_len:]
        users[str(int(ex["user_id"][0]))] = {"train": train, "valid": valid_item, "test": test_item}

    out = work_dir / DATASET
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(users, key=int)
    with open(out / f"{DATASET}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in order:
            seq = users[u]["train"] + [users[u]["valid"], users[u]["test"]]
            for t, item in enumerate(seq):
                f.write(f"{u}\t{item}\t{t}\n")
    splits = {"train": [], "valid": [], "test": []}
    for u in order:
        seq = users[u]["train"] + [users[u]["valid"], users[u]["test"]]
        n = len(users[u]["train"])
        for j in range(1, len(seq)):
            split = "train" if j < n else ("valid" if j == n else "test")
            splits[split].append((u, seq[max(0, j - max_len) : j], seq[j]))
    for split, rows in splits.items():
        with open(out / f"{DATASET}.{split}.inter", "w") as f:
            f.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
            for u, prefix, target in rows:
                f.write(f"{u}\t{' '.join(map(str, prefix))}\t{target}\n")
    with open(out / f"{DATASET}.item", "w") as f:
        f.write("item_id:token\n")
        f.writelines(f"{i}\n" for i in catalogue)

    positives = {i for u in users.values() for i in u["train"] + [u["valid"], u["test"]]}
    n_train = np.array([len(u["train"]) for u in users.values()])
    meta = {
        "samples_dir": str(samples_dir),
        "max_len": max_len,
        "users": len(users),
        "catalogue_items": len(catalogue),
        "positive_items": len(positives),
        "interactions": int(n_train.sum()) + 2 * len(users),
        "train_rows": len(splits["train"]),
        "users_with_fewer_than_2_training_positives": int((n_train < 2).sum()),
        "user_splits": users,
    }
    (work_dir / "export.json").write_text(json.dumps(meta))
    print(json.dumps({k: v for k, v in meta.items() if k != "user_splits"}, indent=1))
    for u in order[:3]:
        s = users[u]
        print(
            f"user {u}: {len(s['train'])} training positives, last 5 {s['train'][-5:]}, "
            f"valid {s['valid']}, test {s['test']}"
        )
    return meta


# ------------------------------------------------------------------ RecBole runs
def recbole_config(args, meta: dict, loss: str, seed: int) -> dict:
    catalogue = meta["catalogue_items"]
    cfg = {
        "data_path": str(args.work_dir),
        "checkpoint_dir": str(args.work_dir / "saved"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        # no filtering: the samples are already 10-core filtered
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "val_interval": None,
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        # model: ours (SASRec: d = 50, FFN d -> d with ReLU, 2 blocks, 1 head, dropout .5,
        # LayerNorm eps 1e-8)
        "hidden_size": 50,
        "inner_size": 50,
        "n_layers": 2,
        "n_heads": 1,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "hidden_act": "relu",
        "layer_norm_eps": 1e-8,
        "loss_type": loss,
        "train_neg_sample_args": (
            {
                "distribution": "uniform",
                "sample_num": 1,
                "alpha": 1.0,
                "dynamic": False,
                "candidate_num": 0,
            }
            if loss == "BPR"
            else None
        ),
        "epochs": args.epochs,
        "train_batch_size": 128,
        "eval_batch_size": 1024,
        "learning_rate": 0.001,
        "eval_step": args.eval_step,
        "stopping_step": args.stopping_step,
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "mode": "full",
            "group_by": "user",
        },
        "repeatable": True,
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10, catalogue],
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 6,
        "seed": seed,
        "reproducibility": True,
        "device": "cpu",
        "use_gpu": False,
        "gpu_id": "",
        "worker": 0,
        "show_progress": False,
        "log_wandb": False,
        "state": "INFO",
    }
    if args.split == "benchmark":
        cfg["benchmark_filename"] = ["train", "valid", "test"]
        cfg["load_col"] = {"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id"]}
        cfg["TIME_FIELD"] = None
        cfg["alias_of_item_id"] = ["item_id_list"]  # one id mapping for prefix and target
    return cfg


def check_split(meta: dict, datasets, max_len: int) -> dict:
    """Every RecBole row (user, prefix, target) of each split against the export."""
    expect = {"train": set(), "valid": set(), "test": set()}
    for u, s in meta["user_splits"].items():
        seq = s["train"] + [s["valid"], s["test"]]
        n = len(s["train"])
        for j in range(1, len(seq)):
            split = "train" if j < n else ("valid" if j == n else "test")
            expect[split].add((u, tuple(map(str, seq[max(0, j - max_len) : j])), str(seq[j])))
    report = {}
    for split, ds in zip(("train", "valid", "test"), datasets, strict=True):
        inter = ds.inter_feat
        uid = ds.id2token(ds.uid_field, inter[ds.uid_field].numpy())
        iid = ds.id2token(ds.iid_field, inter[ds.iid_field].numpy())
        seqs = inter[ds.item_id_list_field].numpy()
        lens = inter[ds.item_list_length_field].numpy()
        got = set()
        for u, s, n, t in zip(uid, seqs, lens, iid, strict=True):
            got.add((str(u), tuple(str(x) for x in ds.id2token(ds.iid_field, s[:n])), str(t)))
        missing, extra = expect[split] - got, got - expect[split]
        report[split] = {
            "rows": len(got),
            "expected": len(expect[split]),
            "missing": len(missing),
            "extra": len(extra),
            "users_differing": sorted({r[0] for r in missing | extra}, key=int)[:20],
        }
    return report


def run_one(args, meta: dict, loss: str, seed: int) -> dict:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    class RecordingTrainer(Trainer):
        """RecBole's Trainer, recording each validation (epoch, score, metrics)."""

        def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
            self.last_epoch = epoch_idx + 1
            t0 = time.time()
            out = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
            self.train_seconds = getattr(self, "train_seconds", 0.0) + time.time() - t0
            return out

        def _valid_epoch(self, valid_data, show_progress=False):
            score, result = super()._valid_epoch(valid_data, show_progress)
            self.history = getattr(self, "history", [])
            self.history.append(
                {
                    "epoch": self.last_epoch,
                    "score": float(score),
                    "metrics": {k: float(v) for k, v in result.items()},
                }
            )
            print(
                f"  [{loss} seed {seed}] epoch {self.last_epoch} valid ndcg@10 "
                f"{score:.4f} ({time.time() - T0:.0f}s)",
                flush=True,
            )
            return score, result

    torch.set_num_threads(1)
    config = Config(
        model="SASRec", dataset=DATASET, config_dict=recbole_config(args, meta, loss, seed)
    )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(1)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    split_check = check_split(
        meta, [d._dataset for d in (train_data, valid_data, test_data)], args.max_len
    )
    print(f"  split check: {json.dumps(split_check)}", flush=True)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])

    # RecBole right-pads every prefix to MAX_ITEM_LIST_LENGTH; attention is causal and
    # the output is read at the last real position, so cutting the batch to its longest
    # prefix gives the same outputs in fewer operations (about 20% faster here)
    forward = model.forward

    def trimmed_forward(item_seq, item_seq_len):
        return forward(item_seq[:, : max(1, int(item_seq_len.max()))], item_seq_len)

    model.forward = trimmed_forward

    if not args.no_exclude_history:
        # our full-ranking protocol: every earlier positive of the user is not ranked
        # (the training positives and, for the test target, the validation target; not
        # only the prefix of the most recent max_len), except the target's own item.
        # Earlier positives of a valid row = train, of a test row = train + valid: both
        # are train + {valid} less the target.
        full_sort_predict = model.full_sort_predict
        dataset_ = train_data._dataset
        n_items = dataset_.item_num
        earlier = torch.zeros((dataset_.user_num, n_items), dtype=torch.bool)
        for user, split in meta["user_splits"].items():
            row = int(dataset_.token2id(model.USER_ID, user))
            items = [str(i) for i in split["train"]] + [str(split["valid"])]
            earlier[row, torch.as_tensor(dataset_.token2id(model.ITEM_ID, items))] = True

        def masked_full_sort_predict(interaction):
            scores = full_sort_predict(interaction)
            users = interaction[model.USER_ID].long().cpu()
            mask = earlier[users].to(scores.device).clone()
            rows = torch.arange(len(users))
            mask[rows, interaction[model.ITEM_ID].long()] = False
            # the prefix is a subset of the earlier positives (kept for a check)
            seq = interaction[model.ITEM_SEQ]
            prefix = torch.zeros_like(mask).scatter_(1, seq.long(), True)
            prefix[:, 0] = False  # padding id 0
            prefix[rows, interaction[model.ITEM_ID].long()] = False
            assert bool((mask | ~prefix).all()), "a prefix item outside the earlier positives"
            return scores.masked_fill(mask, float("-inf"))

        model.full_sort_predict = masked_full_sort_predict

    trainer = RecordingTrainer(config, model)
    T0 = time.time()
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    seconds = time.time() - T0
    # RecBole's early stopping keeps the last validation with score >= the best so far
    best, best_epoch, best_metrics = -float("inf"), None, None
    for h in trainer.history:
        if h["score"] >= best:
            best, best_epoch, best_metrics = h["score"], h["epoch"], h["metrics"]
    catalogue = meta["catalogue_items"]

    def pick(m):
        return {
            "hr@10": m["hit@10"],
            "ndcg@10": m["ndcg@10"],
            "mrr@10": m["mrr@10"],
            "mrr": m[f"mrr@{catalogue}"],
            f"hr@{catalogue}": m[f"hit@{catalogue}"],
        }

    return {
        "loss": loss,
        "seed": seed,
        "test": pick({k: float(v) for k, v in test_result.items()}),
        "best_valid": pick(best_metrics),
        "selected_epoch": best_epoch,
        "epochs_run": trainer.last_epoch,
        "schedule": {
            "epochs": args.epochs,
            "eval_step": args.eval_step,
            "stopping_step": args.stopping_step,
        },
        "seconds": round(seconds, 1),
        "train_seconds": round(trainer.train_seconds, 1),
        "seconds_per_epoch": round(trainer.train_seconds / trainer.last_epoch, 2),
        "train_rows": len(train_data._dataset),
        "steps_per_epoch": -(-len(train_data._dataset) // 128),
        "recbole_users": dataset.user_num - 1,  # less the [PAD] token
        "recbole_items": dataset.item_num - 1,
        "valid_users": len(valid_data._dataset),
        "test_users": len(test_data._dataset),
        "split_check": split_check,
        "valid_history": [{"epoch": h["epoch"], "ndcg@10": h["score"]} for h in trainer.history],
    }


def write_md(result: dict, path: Path) -> None:
    c = result["counts"]
    lines = [
        "# RecBole SASRec on our MovieLens-100K sequential split",
        "",
        f"Script: `benchmarks/external/recbole_sasrec.py` (README beside it). RecBole "
        f"{result['versions']['recbole']}, torch {result['versions']['torch']}, CPU, 1 "
        f"thread; finished {result['finished']}.",
        "",
        f"Data: `{result['samples_dir']}`, positives only (rating >= 4), split "
        f"`{result['split']}`; users {c['users']} (RecBole {c['recbole_users']}), catalogue "
        f"{c['catalogue_items']} items (RecBole {c['recbole_items']}), of which "
        f"{c['positive_items']} occur as positives; {c['interactions']} positives.",
        "",
        "Full ranking over the catalogue, every earlier positive of the user excluded"
        + (" (as ours)." if result["exclude_history"] else " NOT excluded (RecBole's default).")
        + " Test metrics at the epoch of best validation NDCG@10 (RecBole reloads that"
        " checkpoint); each run's schedule: `schedule` in the JSON, note (5).",
        "",
        "| loss | seed | test HR@10 | test NDCG@10 | test MRR@10 | test MRR | valid NDCG@10 "
        "| selected epoch | epochs run | steps/epoch | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        t = r["test"]
        lines.append(
            f"| {r['loss']} | {r['seed']} | {t['hr@10']:.4f} | {t['ndcg@10']:.4f} | "
            f"{t['mrr@10']:.4f} | {t['mrr']:.4f} | {r['best_valid']['ndcg@10']:.4f} | "
            f"{r['selected_epoch']} | {r['epochs_run']} | {r['steps_per_epoch']} | "
            f"{r['seconds']:.0f} |"
        )
    lines += ["", "Validation NDCG@10 by epoch:", ""]
    for r in result["runs"]:
        curve = ", ".join(f"{h['epoch']}: {h['ndcg@10']:.4f}" for h in r["valid_history"])
        lines.append(f"- {r['loss']} seed {r['seed']}: {curve}")
    lines += ["", "Protocol differences that remain: " + result["notes"], ""]
    path.write_text("\n".join(lines))


NOTES = (
    "(1) training examples: RecBole trains one (prefix -> next positive) row per target "
    "with batches of 128 rows, ours all positions of a user's sequence at once with "
    "batches of 128 users, so RecBole takes many more (smaller) steps per epoch and "
    "epochs are not comparable; (2) BPR's random negative: RecBole samples uniformly "
    "over the catalogue avoiding only the target, ours avoids every training positive "
    "of the user; (3) RecBole's SASRec initialises weights N(0, 0.02), uses learned "
    "position embeddings and its own attention dropout placement; (4) ties: RecBole "
    "ranks by torch.topk (ties broken arbitrarily), ours pessimistically."
)


def schedule_note(runs: list) -> str:
    default = {"epochs": 300, "eval_step": 5, "stopping_step": 20}
    capped = [r for r in runs if r.get("schedule", default) != default]
    if not capped:
        return ""
    return (
        " (5) schedule, for CPU time: "
        + "; ".join(
            f"{r['loss']} seed {r['seed']} capped at {r['schedule']['epochs']} epochs, "
            f"validated every {r['schedule']['eval_step']} epoch(s)"
            for r in capped
        )
        + " (ours: validation every 5 epochs, patience 20 validations, up to 300 epochs), "
        "so these runs may stop before RecBole's best epoch."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples-dir", type=Path, default=REPO / "build/samples/movielens_100k_sine")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/recbole_work"))
    p.add_argument(
        "--export-only",
        action="store_true",
        help="write the RecBole files (needs TensorFlow: run with the .venv)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--loss", nargs="+", default=["BPR", "CE"], choices=["BPR", "CE"])
    p.add_argument(
        "--split",
        choices=["loo", "benchmark"],
        default="benchmark",
        help="loo: RecBole's leave-one-out on the .inter file; benchmark: the "
        "split files (exactly ours; loo differs for users with one "
        "training positive: RecBole trains on their validation target "
        "and does not validate them)",
    )
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--eval-step", type=int, default=5)
    p.add_argument("--stopping-step", type=int, default=20)
    p.add_argument("--no-exclude-history", action="store_true")
    p.add_argument("--render-only", action="store_true", help="rewrite --out-md from --out-json")
    p.add_argument("--out-json", type=Path, default=REPO / "docs/results/sasrec_recbole.json")
    p.add_argument("--out-md", type=Path, default=REPO / "docs/results/sasrec_recbole.md")
    args = p.parse_args()
    args.work_dir = args.work_dir.resolve()
    args.samples_dir = args.samples_dir.resolve()

    if args.export_only:
        export(args.samples_dir, args.work_dir, args.max_len)
        return
    if args.render_only:
        write_md(json.loads(args.out_json.read_text()), args.out_md)
        return

    # RecBole 1.2.1 reloads its own best checkpoint (a pickled dict with its config) with
    # torch.load's default, which torch >= 2.6 made weights_only=True
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    import recbole
    import torch

    meta = json.loads((args.work_dir / "export.json").read_text())
    os.chdir(args.work_dir)  # RecBole writes log/ and log_tensorboard/ under the cwd
    runs = []
    previous = json.loads(args.out_json.read_text()) if args.out_json.exists() else None
    for loss in args.loss:
        for seed in args.seeds:
            print(f"== SASRec {loss} seed {seed}", flush=True)
            runs.append(run_one(args, meta, loss, seed))
            print(
                json.dumps({k: v for k, v in runs[-1].items() if k != "valid_history"}), flush=True
            )
            keep = [
                r
                for r in (previous or {}).get("runs", [])
                if (r["loss"], r["seed"]) not in {(x["loss"], x["seed"]) for x in runs}
                and previous.get("split") == args.split
            ]
            result = {
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "samples_dir": os.path.relpath(meta["samples_dir"], REPO),
                "split": args.split,
                "exclude_history": not args.no_exclude_history,
                "versions": {
                    "recbole": recbole.__version__,
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                },
                "machine": f"{platform.machine()} ({os.cpu_count()} cores), torch 1 thread",
                "counts": {
                    "users": meta["users"],
                    "catalogue_items": meta["catalogue_items"],
                    "positive_items": meta["positive_items"],
                    "interactions": meta["interactions"],
                    "recbole_users": runs[-1]["recbole_users"],
                    "recbole_items": runs[-1]["recbole_items"],
                    "users_with_fewer_than_2_training_positives": meta[
                        "users_with_fewer_than_2_training_positives"
                    ],
                },
                "config": {
                    k: v
                    for k, v in recbole_config(args, meta, "BPR", 0).items()
                    if k
                    not in (
                        "data_path",
                        "checkpoint_dir",
                        "seed",
                        "loss_type",
                        "train_neg_sample_args",
                        "epochs",  # per run: `schedule`
                        "eval_step",
                        "stopping_step",
                    )
                },
                "losses": {
                    "BPR": "one uniform negative per target",
                    "CE": "softmax over the catalogue (train_neg_sample_args None)",
                },
                "notes": NOTES,
                "runs": sorted(keep + runs, key=lambda r: (r["loss"], r["seed"])),
            }
            result["notes"] += schedule_note(result["runs"])
            args.out_json.parent.mkdir(parents=True, exist_ok=True)
            args.out_json.write_text(json.dumps(result, indent=1) + "\n")
            write_md(result, args.out_md)


if __name__ == "__main__":
    main()
