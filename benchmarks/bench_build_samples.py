"""Benchmark: the Beam sample job vs a plain single-process numpy build, same samples.

Simulates a log of about `--events` events (KuaiRec layout), then in one run and on the
same files:
  1. the Beam job (DirectRunner, in-process) in a subprocess, sampling its peak RSS;
  2. a plain single-process build: pandas reads the CSV, the same pure per-user
     functions (`tfnegseq.data.samples`) build the samples, tfx-bsl encodes them and
     `tf.io.TFRecordWriter` writes gzip shards; also in a subprocess, with its peak RSS.
Writes `benchmarks/results/build_samples.json`.

    python benchmarks/bench_build_samples.py [--events 1000000] [--max-history 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _machine import machine, write_result  # noqa: E402

REPO = os.path.dirname(HERE)

PLAIN = r"""
import sys, time, numpy as np, pandas as pd, tensorflow as tf
from tfnegseq.config import load_config
from tfnegseq.data.events import EventChunk
from tfnegseq.data.rules import apply_rules
from tfnegseq.data.samples import SplitAssigner, SideTables, build_ctr_samples, SPLITS
from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder
cfg = load_config(sys.argv[1], sys.argv[2:])
t = time.perf_counter()
df = pd.read_csv(cfg.source.path + "/big_matrix.csv")
ev = EventChunk(user_id=df.user_id.values, item_id=df.video_id.values,
    timestamp=np.round(df.timestamp.values * 1000).astype(np.int64), value=df.watch_ratio.values,
    file_index=np.zeros(len(df)), line=np.arange(2, len(df) + 2),
    columns={"watch_ratio": df.watch_ratio.values, "play_duration": df.play_duration.values,
             "video_duration": df.video_duration.values})
ev = apply_rules(ev, cfg.rules)
enc = RecordBatchToExamplesEncoder()
splitter = SplitAssigner(cfg.split)
opts = tf.io.TFRecordOptions(compression_type="GZIP")
writers = {s: tf.io.TFRecordWriter(f"{cfg.output.dir}/{s}.tfrecord.gz", opts) for s in SPLITS}
n = 0
for _, user_ev in ev.split_by_user():
    for split, batch in build_ctr_samples(user_ev, cfg.samples, splitter, SideTables()):
        for x in enc.encode(batch):
            writers[SPLITS[split]].write(x)
            n += 1
for w in writers.values():
    w.close()
print(n, time.perf_counter() - t)
"""


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    """Runs `cmd`, returning (stdout, seconds, peak RSS in MiB over the process tree)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{err[-3000:]}")
    return out, time.perf_counter() - t, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--max-history", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "build_samples.json"))
    args = ap.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    py = sys.executable
    cfg_path = os.path.join(REPO, "configs", "synthetic.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        # the simulator's mean events per user is about (min + max) / 4 for its
        # heavy-tailed draw; pick users so the total is about --events (reported exactly)
        users = max(1, args.events // 500)
        common = [f"source.path={tmp}/log", f"samples.max_history={args.max_history}",
                  f"simulate.num_users={users}", "simulate.events_per_user_min=50",
                  "simulate.events_per_user_max=2000", "simulate.num_items=20000"]
        sets = [x for c in common for x in ("--set", c)]
        from tfnegseq.config import load_config
        from tfnegseq.data.simulate import simulate_to_dir

        t = time.perf_counter()
        info = simulate_to_dir(load_config(cfg_path, common).simulate, f"{tmp}/log")
        sim_s = time.perf_counter() - t
        print(f"simulated {info} in {sim_s:.1f}s", flush=True)

        beam_out = f"{tmp}/beam_out"
        out, beam_s, beam_mem = run_measured(
            [py, "-m", "beam_jobs.build_samples", "--config", cfg_path, *sets,
             "--set", f"output.dir={beam_out}"], env)
        manifest = json.load(open(f"{beam_out}/manifest.json"))
        n_beam = manifest["total_samples"]
        print(f"beam: {n_beam} samples in {beam_s:.1f}s, peak {beam_mem:.0f} MiB", flush=True)

        plain_out = f"{tmp}/plain_out"
        os.makedirs(plain_out)
        out, plain_s, plain_mem = run_measured(
            [py, "-c", PLAIN, cfg_path, *common, f"output.dir={plain_out}"], env)
        n_plain = int(out.split()[0])
        print(f"plain: {n_plain} samples in {plain_s:.1f}s, peak {plain_mem:.0f} MiB", flush=True)

    result = {
        "benchmark": "build_samples",
        "events": info["events"],
        "users": info["users"],
        "max_history": args.max_history,
        "lifelong_length": 0,
        "runner": "DirectRunner (in-process)",
        "beam": {"samples": n_beam, "seconds": round(beam_s, 2),
                 "samples_per_second": round(n_beam / beam_s, 1),
                 "job_samples_per_second": manifest["samples_per_second"],
                 "peak_rss_mib": round(beam_mem, 1)},
        "plain_numpy": {"samples": n_plain, "seconds": round(plain_s, 2),
                        "samples_per_second": round(n_plain / plain_s, 1),
                        "peak_rss_mib": round(plain_mem, 1)},
        "beam_over_plain_time_ratio": round(beam_s / plain_s, 2),
        "goal_samples_per_second": 20000,
        "machine": machine(),
        "note": "seconds are wall-clock of the whole process (imports and pipeline "
                "start-up included); job_samples_per_second is measured inside the job "
                "from pipeline start to finish",
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
