"""Benchmark: one user against 100 and 1,000 candidates, user side shared vs not.

For each CTR backbone (L = 100, d = 64, r = 0.5, the unified blocks with 2 layers) and
polarity (none, pbe, tapf), times the two scoring paths of `serving_default` on the
model itself (ids already looked up; the export adds the same lookups to both):

    per-row   the user-level tensors tiled over the C candidates, `model(rows)` (the
              export before the user side was shared)
    shared    `CtrModel.score_candidates`: lookups, the mixed sequence, PBE and, for
              OneTrans without TAPF, every layer's behaviour keys and values once per
              user; TAPF, the target-dependent attention and the head per candidate

each in a `tf.function` without XLA, as the export traces it. Latency: the median of
`--calls` calls after 3 warm-up calls, the paths and candidate counts interleaved call by
call. Reported: ms per request, and the ratio x1,000 / x100 per path (goal for the shared
path: < 3). Writes `benchmarks/results/candidates.json`.

    python benchmarks/bench_candidates.py [--calls 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _machine import machine, write_result  # noqa: E402
from bench_backbones import BACKBONES, batch_inputs, build  # noqa: E402

COUNTS = (100, 1000)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--polarities", default="none,pbe,tapf")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "candidates.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, _ = batch_inputs(rng, 1)
    users = {k: tf.constant(v) for k, v in x.items() if k != "item_id"}
    cands = {c: tf.constant(rng.integers(1, 20_000, c), tf.int64) for c in COUNTS}
    result: dict[str, Any] = {"machine": machine(), "tensorflow": tf.__version__,
                              "calls": args.calls, "results": {}}
    lines = ["| backbone | polarity | per-row x100 ms | per-row x1000 ms | ratio | "
             "shared x100 ms | shared x1000 ms | ratio |", "| --- " * 8 + "|"]
    for b in BACKBONES:
        for p in args.polarities.split(","):
            model = build(b, p)

            @tf.function(autograph=False)
            def per_row(items, model=model):
                num = tf.shape(items)[0]
                rows = {k: tf.repeat(v, num, axis=0) for k, v in users.items()}
                rows["item_id"] = items
                return model(rows, training=False)["probability"]

            @tf.function(autograph=False)
            def shared(items, model=model):
                return model.score_candidates(users, {"item_id": items}, tf.shape(items)[0],
                                              training=False)["probability"]

            paths = {"per_row": per_row, "shared": shared}
            for fn in paths.values():
                for c in COUNTS:
                    for _ in range(3):
                        fn(cands[c]).numpy()
            times: dict[tuple[str, int], list[float]] = {(n, c): [] for n in paths
                                                         for c in COUNTS}
            for _ in range(args.calls):
                for n, fn in paths.items():
                    for c in COUNTS:
                        start = time.perf_counter()
                        fn(cands[c]).numpy()
                        times[(n, c)].append(1000 * (time.perf_counter() - start))
            med = {k: statistics.median(v) for k, v in times.items()}
            entry = {f"{n}_x{c}_ms": med[(n, c)] for n, c in med}
            for n in paths:
                entry[f"{n}_ratio"] = med[(n, 1000)] / med[(n, 100)]
            entry["shared_over_per_row_x1000"] = med[("shared", 1000)] / med[("per_row", 1000)]
            result["results"][f"{b}/{p}"] = entry
            lines.append(f"| {b} | {p} | {med[('per_row', 100)]:.1f} | "
                         f"{med[('per_row', 1000)]:.1f} | {entry['per_row_ratio']:.2f} | "
                         f"{med[('shared', 100)]:.1f} | {med[('shared', 1000)]:.1f} | "
                         f"{entry['shared_ratio']:.2f} |")
            print(lines[-1], flush=True)
    write_result(result, args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
