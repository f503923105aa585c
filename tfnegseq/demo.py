"""`make demo`: the main job end to end on the embedded synthetic log.

1. simulate a short-video log (KuaiRec layout) -> build/synthetic_log
2. build leakage-free samples with the Beam job (DirectRunner) -> build/samples/synthetic
3. train Pos Seq and Mix Seq + TAPF (DIN) and print both AUCs; training exports a TF
   Serving SavedModel of each
4. start the local TF-Serving-compatible REST server on the Mix Seq + TAPF export, score
   one real user's candidates through `tfnegseq.serving.client`, print, stop the server
5. SINE on the same log (`configs/synthetic_sine.yaml`'s rules and model, a short
   training): sequential samples with the Beam job, training with early stopping on
   full-ranking NDCG@10, export, and one user's top 10 of the whole catalogue through
   the `retrieve` signature over REST (`ServingClient.retrieve`), with the user's
   actual next positive (the test target) marked where it was retrieved

Run `python -m tfnegseq.demo [--config configs/synthetic.yaml] [--set k=v ...]
[--sine-set k=v ...]` (`--set` overrides the CTR config, `--sine-set` step 5's).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from tfnegseq.config import load_config

# Shipped inside the package (tfnegseq/configs; `configs/` at the repository root links
# to it), so the demo runs from an installed wheel in any directory.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "synthetic.yaml")
SINE_CONFIG = os.path.join(os.path.dirname(DEFAULT_CONFIG), "synthetic_sine.yaml")
# the demo's SINE: the log of step 1 (200 users), a few minutes on a laptop CPU
SINE_DEMO = ["output.dir=build/samples/demo_sine", "train.run_dir=runs/demo/sine",
             "train.batch_size=32", "train.epochs=40", "train.early_stopping_patience=4",
             "train.validate_every=5"]


def _step(n: int, text: str) -> None:
    print(f"\n[{n}] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfnegseq.demo")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--sine-set", dest="sine_overrides", action="append", default=[],
                        help="overrides of step 5's SINE config (k=v)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, args.overrides)

    from tfnegseq.data import simulate

    _step(1, f"simulating a short-video log into {cfg.source.path}")
    t = time.perf_counter()
    info = simulate.simulate_to_dir(cfg.simulate, cfg.source.path)
    print(f"    {info} in {time.perf_counter() - t:.1f}s")

    from tfnegseq.data import job

    _step(2, f"building samples with Beam (DirectRunner) into {cfg.output.dir}")
    manifest = job.run(cfg)
    s = manifest["samples"]
    print(
        f"    samples written: train={s['train']} valid={s['valid']} test={s['test']}, "
        f"positive rate {manifest['positive_rate']['train']:.3f}, "
        f"dead letters {manifest['dead_letters']}, {manifest['samples_per_second']} samples/s"
    )

    from tfnegseq import train

    _step(3, "training Pos Seq and Mix Seq + TAPF (DIN) on the synthetic samples")
    results = {}
    for label, sets in (
        ("Pos Seq", ["model.positive_ratio=1.0", "model.polarity=none"]),
        ("Mix Seq + TAPF", ["model.positive_ratio=0.5", "model.polarity=tapf"]),
    ):
        run_dir = os.path.join("runs", "demo", label.replace(" ", "_").replace("+", "plus"))
        metrics = train.run_config(
            load_config(args.config, args.overrides + sets + [f"train.run_dir={run_dir}"])
        )
        results[label] = metrics
    print("\n    setting           AUC     GAUC    logloss")
    for label, m in results.items():
        print(f"    {label:<16}  {m['auc']:.4f}  {m['gauc']:.4f}  {m['logloss']:.4f}")

    _step(4, "serving the Mix Seq + TAPF export over REST and scoring one user")
    serve_and_score(cfg, results["Mix Seq + TAPF"]["export"])

    _step(5, "SINE on the same log: sequential samples, training, retrieval over REST")
    sine_cfg = load_config(SINE_CONFIG, [f"source.path={cfg.source.path}", *SINE_DEMO,
                                         *args.sine_overrides])
    manifest = job.run(sine_cfg)
    users = manifest["samples"].get("sequences") or 0
    print(f"    sequences written: {users} users, dead letters {manifest['dead_letters']}")
    if users < sine_cfg.train.batch_size:
        print(f"    error: step 5 needs at least train.batch_size={sine_cfg.train.batch_size} "
              f"users with samples.min_core={sine_cfg.samples.min_core} positives; the log "
              f"gave {users}: simulate more users or events, or pass --sine-set "
              f"samples.min_core=... / train.batch_size=...", file=sys.stderr)
        return 1
    m = train.run_config(sine_cfg, verbose=0)
    v = m.get("validation") or {}
    print(f"    SINE after {v.get('stopped_epoch') or sine_cfg.train.epochs} epochs (best "
          f"validation epoch {v.get('best_epoch')}): test HR@10 {m['hr@10']:.4f}, NDCG@10 "
          f"{m['ndcg@10']:.4f}; against the user's skips AUC {m['auc']:.4f}")
    serve(m["export"], lambda client: retrieve_one(sine_cfg, client))
    return 0


def _one_user(cfg, n_candidates: int = 5) -> tuple[dict, list[dict]]:
    """A test-split user's latest sample (raw ids) and that user's last logged
    impressions as candidates (raw ids, side features, labels)."""
    import glob

    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(cfg.output.dir, "test", "*.tfrecord.gz")))
    rows = []
    for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(400):
        f = tf.train.Example.FromString(r.numpy()).features.feature
        rows.append({k: list(v.int64_list.value) for k, v in f.items()})
    user = max(rows, key=lambda r: (len(r["pos_item_id"]) > 0, len(r["neg_item_id"]) > 0,
                                    r["order"][0]))
    same = [r for r in rows if r["user_id"] == user["user_id"]][-n_candidates:]
    return user, same


def serve(version_dir: str, work) -> None:
    """Starts the local REST server on an export in a subprocess, calls
    `work(client)`, stops the server."""
    import socket
    import subprocess

    from tfnegseq.serving.client import ServingClient
    from tfnegseq.serving.server import stop_gracefully

    base = os.path.dirname(version_dir)
    name = os.path.basename(base)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tfnegseq.serving.server", "--model_base_path", base,
         "--model_name", name, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        client = ServingClient(f"http://127.0.0.1:{port}", name, timeout=30.0, retries=0)
        deadline = time.time() + 120
        while True:
            try:
                status = client.status()
                break
            except Exception as e:
                if server.poll() is not None or time.time() > deadline:
                    err = server.stderr.read()[-2000:] if server.stderr else ""
                    raise RuntimeError(f"server did not start: {err}") from e
                time.sleep(0.5)
        print(f"    server up on 127.0.0.1:{port}: {status['model_version_status'][0]}")
        work(client)
    finally:
        print(f"    server stopped (exit code {stop_gracefully(server, 60)})")


def serve_and_score(cfg, version_dir: str) -> None:
    def score(client) -> None:
        user, rows = _one_user(cfg)
        candidates = [r["item_id"][0] for r in rows]
        labels = [r["label"][0] for r in rows]
        scores = client.score(
            user["user_id"][0], user["pos_item_id"], user["pos_order"],
            user["neg_item_id"], user["neg_order"], candidates,
            profile={f: user[f"user_{f}"][0] for f in cfg.samples.user_features},
            item_features={f: [r[f"item_{f}"][0] for r in rows]
                           for f in cfg.samples.item_features},
        )
        print(f"    user {user['user_id'][0]}: {len(user['pos_item_id'])} positives, "
              f"{len(user['neg_item_id'])} negatives in history")
        for item, label, p in zip(candidates, labels, scores, strict=True):
            print(f"    candidate {item:>6}  p(click) = {p:.4f}  (logged label {label})")

    serve(version_dir, score)


def retrieve_one(cfg, client, top: int = 10) -> None:
    """One user's test-time history (every positive before the test target, each with
    its nearest passive negative) -> the top `top` of `retrieve`, the test target
    marked."""
    import glob

    import tensorflow as tf

    from tfnegseq.kinds.sequential.export import example_history

    files = sorted(glob.glob(os.path.join(cfg.output.dir, "sequences", "*.tfrecord.gz")))
    record = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").take(1)))
    f = tf.train.Example.FromString(record.numpy()).features.feature
    example = {k: list(v.int64_list.value) for k, v in f.items()}
    pos, neg = example_history(example, cfg.model.negative_rule)
    target = example["test_item_id"][0]
    items, scores = client.retrieve(pos, neg)
    print(f"    user {example['user_id'][0]}: {len(pos)} positives in history "
          f"({sum(1 for x in neg if x >= 0)} with a passive negative); next positive "
          f"(test target) {target}")
    for rank, (item, score) in enumerate(zip(items[:top], scores[:top], strict=True), 1):
        mark = "  <- the test target" if item == target else ""
        print(f"    {rank:>2}. item {item:>6}  score {score:8.4f}{mark}")
    if target in items:
        print(f"    the test target is at rank {items.index(target) + 1} of {len(items)}")
    else:
        print(f"    the test target is not in the top {len(items)}")


if __name__ == "__main__":
    sys.exit(main())
