"""Benchmark: serving latency of an exported CTR model, in process and over REST.

One request = one user with full histories (100 positives, 100 negatives; L = 100)
scoring 100 candidates through `serving_default`. Measured on this CPU, at concurrency
1 and 8 (threads issuing requests back to back):

- in process: `tf.saved_model.load(...).signatures["serving_default"](**tensors)`;
- REST: the local server (`python -m tfnegseq.serving.server`, a subprocess on
  127.0.0.1) answering `POST /v1/models/ctr:predict` row-format bodies (serialized once,
  sent over one keep-alive `http.client` connection per thread; `ServingClient.predict`,
  which uses `requests`, is timed too).

Reports p50 / p99 latency (ms) and throughput (requests/s), the REST overhead
(REST p50 - in-process p50 at concurrency 1, the two measured alternately, so a busy
machine's background load hits both alike) and where a REST request's time goes (JSON
decode, JSON -> arrays, arrays -> tensors, graph, reply encoding; measured with the
server's own functions, in this process).

Under load (issue 13): the valid request's p50 / p99 while another client sends
maximal-work requests back to back (the server's default caps, `Limits()`: `--heavy-rows`
rows x `--max_examples / rows` candidates, full trained histories, i.e. the most work
one request may ask for, scored `--chunk_examples` examples per graph run), beside its
unloaded p50 / p99 measured in the same run, in alternating rounds (unloaded, loaded,
unloaded, ...) so background load hits both alike; goal: loaded p99 < 3x unloaded p99.
Measured on a fresh server per setting: the server's defaults, then each
`--load-settings` entry (`--graph_lanes` and `--chunk_examples`; "unscheduled" = no
admission control, every predict thread runs its graph at once), in the same run. The server's
RSS (psutil) is sampled throughout and read after each run.

Writes `benchmarks/results/serving.json` (machine, git commit, load average).

Without `--model-dir` it builds a model in a temp dir: simulate -> Beam job -> train
(max_history 100, 1 short epoch) -> export.

    python benchmarks/bench_serving.py [--model-dir EXPORT/ctr/1] [--requests 300]
        [--load-requests 150] [--heavy-rows 16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tfnegseq.provenance import git_commit
from tfnegseq.serving.limits import Limits
from tfnegseq.serving.server import stop_gracefully

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _machine import machine, write_result  # noqa: E402

REPO = os.path.dirname(HERE)
HISTORY = 100
CANDIDATES = 100
MIB = 2**20
UNSCHEDULED_LANES = 1024  # more than the server's predict threads: no admission control
GOALS = {
    "rest_p99_ms_concurrency_1": 20.0,
    "rest_overhead_ms": 3.0,
    "p99_under_load_over_unloaded_p99": 3.0,
}


def build_model(tmp: str, users: int) -> str:
    """simulate -> Beam job -> 1 short epoch -> export; returns the version directory."""
    from tfnegseq import train
    from tfnegseq.config import load_config
    from tfnegseq.data import job
    from tfnegseq.data.simulate import simulate_to_dir
    from tfnegseq.export import export_run

    sets = [
        f"source.path={tmp}/log",
        f"output.dir={tmp}/samples",
        f"train.run_dir={tmp}/run",
        f"simulate.num_users={users}",
        "simulate.events_per_user_min=200",
        "simulate.events_per_user_max=1500",
        f"samples.max_history={HISTORY}",
        f"model.sequence_length={HISTORY}",
        "train.epochs=1",
        "train.steps_per_epoch=30",
        "train.batch_size=512",
        "train.shuffle_buffer=10000",
        "train.jit_compile=false",
    ]
    cfg = load_config(os.path.join(REPO, "configs", "synthetic.yaml"), sets)
    simulate_to_dir(cfg.simulate, cfg.source.path)
    job.run(cfg)
    train.run_config(cfg, verbose=0)
    return export_run(cfg.train.run_dir, export_base=f"{tmp}/export", model_name="ctr")


def request_instance(version_dir: str, seed: int = 0) -> dict[str, Any]:
    """One row-format instance: a real user, 100 + 100 history items, 100 candidates."""
    from tfnegseq.export import read_metadata

    meta = read_metadata(version_dir)
    names = meta["signatures"]["serving_default"]["inputs"]
    rng = np.random.default_rng(seed)
    assets = os.path.join(version_dir, "assets")
    items = np.loadtxt(os.path.join(assets, "item_id.txt"), np.int64, ndmin=1)
    users = np.loadtxt(os.path.join(assets, "user_id.txt"), np.int64, ndmin=1)
    orders = np.sort(rng.choice(np.arange(1, 10 * HISTORY), 2 * HISTORY, replace=False))
    is_pos = np.zeros(2 * HISTORY, bool)
    is_pos[rng.choice(2 * HISTORY, HISTORY, replace=False)] = True
    inst: dict[str, Any] = {
        "user_id": int(users[0]),
        "pos_item_id": rng.choice(items, HISTORY).tolist(),
        "pos_order": orders[is_pos].tolist(),
        "neg_item_id": rng.choice(items, HISTORY).tolist(),
        "neg_order": orders[~is_pos].tolist(),
        "item_id": rng.choice(items, CANDIDATES, replace=False).tolist(),
    }
    for name, kind in names.items():
        if name in inst:
            continue
        values = np.loadtxt(os.path.join(assets, f"{name}.txt"), np.int64, ndmin=1)
        inst[name] = int(values[0]) if kind == "user" else rng.choice(values, CANDIDATES).tolist()
    return inst


def summarize(latencies: list[float], wall: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "throughput_rps": round(len(ms) / wall, 1),
    }


def load(
    call: Callable[[], Any],
    requests: int,
    concurrency: int,
    warmup: int,
    per_thread: Callable[[], Callable[[], Any]] | None = None,
) -> dict[str, float]:
    """Runs `requests` calls from `concurrency` threads; returns latency stats.

    `per_thread` (optional) makes each thread's own callable (e.g. its own session).
    """
    for _ in range(warmup):
        call()
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []

    def worker() -> None:
        fn = per_thread() if per_thread else call
        fn()  # this thread's first call (connection set-up) is not measured
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return summarize(latencies, time.perf_counter() - start)


def interleaved(
    local: Callable[[], Any], remote: Callable[[], Any], requests: int, warmup: int
) -> tuple[dict[str, float], dict[str, float], float]:
    """Concurrency 1, alternating one in-process and one REST request.

    Returns (in-process stats, REST stats, median of the per-pair REST - in-process
    differences in ms). Alternating keeps a busy machine's background load the same
    for both, which separate runs do not.
    """
    for _ in range(warmup):
        local()
        remote()
    t_local: list[float] = []
    t_remote: list[float] = []
    for i in range(requests):
        order = (local, remote) if i % 2 == 0 else (remote, local)
        for fn in order:
            t = time.perf_counter()
            fn()
            (t_local if fn is local else t_remote).append(time.perf_counter() - t)
    wall_local, wall_remote = sum(t_local), sum(t_remote)
    diff = float(np.median(np.asarray(t_remote) - np.asarray(t_local))) * 1000
    return summarize(t_local, wall_local), summarize(t_remote, wall_remote), round(diff, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(
    base_path: str, name: str, limits: Limits
) -> Iterator[tuple[str, int, subprocess.Popen]]:
    """The local REST server in a subprocess on 127.0.0.1 with `limits`' work caps;
    yields (URL, port, process)."""
    import requests

    port = free_port()
    caps = [
        f"--{flag}={getattr(limits, flag)}"
        for flag in (
            "max_rows", "max_candidates", "max_history", "max_examples", "chunk_rows",
            "chunk_examples", "max_connections", "graph_lanes",
        )
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tfnegseq.serving.server",
            "--model_base_path",
            base_path,
            "--model_name",
            name,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--file_system_poll_wait_seconds",
            "0",
            "--log_level",
            "WARNING",
            *caps,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/v1/models/{name}", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise TimeoutError("local server did not become healthy")
        yield url, port, proc
    finally:
        stop_gracefully(proc)


def breakdown(version_dir: str, body: bytes, repeats: int) -> dict[str, float]:
    """Median ms of each stage of a REST predict, with the server's own functions."""
    import tensorflow as tf

    from tfnegseq.serving import server
    from tfnegseq.serving._models import Servable

    servable = Servable("ctr", 1, version_dir)
    infos = servable.signature_defs["serving_default"].inputs
    stages: dict[str, list[float]] = {
        k: []
        for k in (
            "json_decode_ms",
            "json_to_arrays_ms",
            "arrays_to_tensors_ms",
            "graph_ms",
            "reply_encode_ms",
            "server_total_ms",
        )
    }
    fn = servable._functions["serving_default"]
    for _ in range(repeats):
        t0 = time.perf_counter()
        doc = server.parse_json(body)
        t1 = time.perf_counter()
        arrays, row = server.tensors_from_request(doc, infos)
        server.check_shapes(arrays, infos, "serving_default")
        t2 = time.perf_counter()
        tensors = {
            k: tf.constant(v, dtype=tf.dtypes.as_dtype(infos[k].dtype)) for k, v in arrays.items()
        }
        t3 = time.perf_counter()
        out = {k: v.numpy() for k, v in fn(**tensors).items()}
        t4 = time.perf_counter()
        json.dumps(server.response_from_tensors(out, row)).encode()
        t5 = time.perf_counter()
        for key, dt in zip(
            stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0), strict=True
        ):
            stages[key].append(dt * 1000)
    return {k: round(float(np.median(v)), 3) for k, v in stages.items()}


def max_work_inputs(
    inst: dict[str, Any], version_dir: str, rows: int, candidates: int, history: int
) -> dict[str, Any]:
    """A columnar request at the caps: `rows` copies of `inst` with `history` positives
    and negatives and `candidates` candidates (vocabulary items, cycled)."""
    assets = os.path.join(version_dir, "assets")
    items = np.loadtxt(os.path.join(assets, "item_id.txt"), np.int64, ndmin=1)
    cand = np.resize(items, candidates)
    inputs: dict[str, Any] = {}
    for name, value in inst.items():
        if name == "item_id":
            row = cand.tolist()
        elif name.startswith("item_"):
            row = np.resize(np.asarray(value), candidates).tolist()
        elif name.startswith(("pos_", "neg_")):
            row = list(value)[-history:]
        else:
            row = value
        inputs[name] = [row] * rows
    return {"inputs": inputs}


class RssMonitor:
    """Samples a process's RSS (psutil) every `period` s on a thread; `peak` is the max."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.period = period
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.rss())
                self.samples += 1
            self._stop.wait(self.period)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def vm_hwm(pid: int) -> int | None:
    """The kernel's peak RSS of a process (Linux `VmHWM`), bytes; None elsewhere."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return None


def under_load(
    valid: Callable[[], Any],
    heavy: Callable[[], Any],
    requests: int,
    rounds: int,
    max_heavy: int,
) -> dict[str, Any]:
    """Valid-request latency alone and while `heavy` runs back to back on its own thread.

    `rounds` alternating (unloaded, loaded) phases of `requests // rounds` valid requests
    each (concurrency 1). In a loaded phase the heavy client sends its first request,
    the valid requests start 50 ms later, and the heavy client stops after the last
    valid one (its request in flight is awaited before the next phase). At most
    `max_heavy` heavy requests in all. Returns the stats of both and of the heavy ones.
    """
    per = max(1, requests // rounds)
    unloaded: list[float] = []
    loaded: list[float] = []
    heavy_s: list[float] = []
    overlap = {"valid_while_heavy_in_flight": 0}
    in_flight = threading.Event()
    for _ in range(rounds):
        for _ in range(per):
            t = time.perf_counter()
            valid()
            unloaded.append(time.perf_counter() - t)
        stop = threading.Event()

        def send_heavy(stop: threading.Event = stop) -> None:
            while not stop.is_set() and len(heavy_s) < max_heavy:
                in_flight.set()
                t = time.perf_counter()
                heavy()
                heavy_s.append(time.perf_counter() - t)
                in_flight.clear()

        thread = threading.Thread(target=send_heavy)
        thread.start()
        in_flight.wait(5)
        time.sleep(0.05)
        for _ in range(per):
            t = time.perf_counter()
            valid()
            loaded.append(time.perf_counter() - t)
            overlap["valid_while_heavy_in_flight"] += in_flight.is_set()
        stop.set()
        thread.join()
    alone, busy = summarize(unloaded, sum(unloaded)), summarize(loaded, sum(loaded))
    return {
        "unloaded": alone,
        "loaded": busy,
        "p50_ratio": round(busy["p50_ms"] / alone["p50_ms"], 2),
        "p99_ratio": round(busy["p99_ms"] / alone["p99_ms"], 2),
        "max_work_requests": summarize(heavy_s, sum(heavy_s)) if heavy_s else None,
        "rounds": rounds,
        **overlap,
    }


def session_call(port: int, name: str, payload: bytes) -> Callable[[], Any]:
    """A lean keep-alive client (http.client) posting `payload` to the model's predict:
    what is measured is the server, not the client library (ServingClient is timed
    separately)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    path = f"/v1/models/{name}:predict"
    headers = {"Content-Type": "application/json"}

    def call() -> None:
        conn.request("POST", path, body=payload, headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(data.decode()[:500])

    return call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=None, help="an exported version dir (else built)")
    ap.add_argument(
        "--work-dir", default=None, help="build (or reuse) the model here instead of a temp dir"
    )
    ap.add_argument("--users", type=int, default=120, help="simulated users when building")
    ap.add_argument("--requests", type=int, default=300, help="measured requests per setting")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument(
        "--load-requests", type=int, default=150, help="valid requests measured under load"
    )
    ap.add_argument("--load-rounds", type=int, default=3)
    ap.add_argument("--max-heavy", type=int, default=40, help="most maximal-work requests")
    ap.add_argument(
        "--heavy-rows", type=int, default=16,
        help="rows of the maximal-work request (candidates: --max_examples / rows)",
    )  # fmt: skip
    ap.add_argument(
        "--load-settings", default="1:2048,unscheduled:256,unscheduled:2048",
        help="more servers to measure under load, beside the defaults: LANES:CHUNK_EXAMPLES "
        "(LANES an integer or 'unscheduled'), comma-separated",
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results", "serving.json"))
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import requests
    import tensorflow as tf

    levels = [int(c) for c in args.concurrency.split(",")]
    limits = Limits()  # the server's defaults (serving/README.md)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = args.work_dir or tmp
        built = os.path.join(work, "export", "ctr", "1")
        if args.model_dir:
            version_dir = args.model_dir
        elif args.work_dir and os.path.exists(os.path.join(built, "saved_model.pb")):
            version_dir = built
        else:
            version_dir = build_model(work, args.users)
        inst = request_instance(version_dir)
        from tfnegseq.export import read_metadata

        meta = read_metadata(version_dir)
        model_config = meta["config"]["model"]
        trained_history = int(meta["max_history"])
        body = json.dumps({"instances": [inst]}).encode()

        loaded = tf.saved_model.load(version_dir)
        serve = loaded.signatures["serving_default"]
        tensors = {k: tf.constant([v], tf.int64) for k, v in inst.items()}
        probs = serve(**tensors)["probability"].numpy()
        assert probs.shape == (1, CANDIDATES), probs.shape
        local = lambda: serve(**tensors)["probability"].numpy()  # noqa: E731
        stages = breakdown(version_dir, body, max(50, args.requests // 4))

        base = os.path.dirname(version_dir)
        name = os.path.basename(base)
        with local_server(base, name, limits) as (url, port, proc), RssMonitor(proc.pid) as mem:
            rss_start = mem.rss()
            predict = f"{url}/v1/models/{name}:predict"
            headers = {"Content-Type": "application/json"}
            reply = requests.post(predict, data=body, headers=headers, timeout=30)
            reply.raise_for_status()
            np.testing.assert_allclose(reply.json()["predictions"], probs, rtol=1e-5, atol=1e-6)

            def per_thread() -> Callable[[], Any]:
                return session_call(port, name, body)

            in_process, rest, paired = {}, {}, None
            for c in levels:
                if c == 1:  # interleaved, so both see the same background load
                    in_process["1"], rest["1"], paired = interleaved(
                        local, per_thread(), args.requests, args.warmup
                    )
                else:
                    in_process[str(c)] = load(local, args.requests, c, args.warmup)
                    rest[str(c)] = load(
                        per_thread(), args.requests, c, args.warmup, per_thread=per_thread
                    )

            from tfnegseq.serving.client import ServingClient

            client = ServingClient(url, name, timeout=30)
            client_p50 = load(
                lambda: client.predict(instances=[inst]), max(50, args.requests // 4), 1, 5
            )["p50_ms"]

            # Fixed REST cost, with a request whose graph time is small and steady:
            # 1 candidate, 1 positive and 1 negative.
            small = {k: (v[-1:] if isinstance(v, list) else v) for k, v in inst.items()}
            small_tensors = {k: tf.constant([v], tf.int64) for k, v in small.items()}
            small_body = json.dumps({"instances": [small]}).encode()
            small_local, small_rest, small_paired = interleaved(
                lambda: serve(**small_tensors)["probability"].numpy(),
                session_call(port, name, small_body),
                args.requests,
                args.warmup,
            )
            rss_after = mem.rss()
            hwm = vm_hwm(proc.pid)

        # Valid requests while another client sends maximal-work requests (a request at
        # the default --max_examples), against a server with the default caps, with the
        # default --graph_lanes and without admission control (--graph_lanes above the
        # predict threads: every thread runs its graph at once, as before the
        # scheduler), in the same run.
        history = min(limits.max_history, trained_history)
        heavy_rows = args.heavy_rows
        heavy_candidates = min(limits.max_candidates, limits.max_examples // heavy_rows)
        heavy_body = json.dumps(
            max_work_inputs(inst, version_dir, heavy_rows, heavy_candidates, history)
        ).encode()
        settings = {"server_defaults": limits}
        for spec in filter(None, args.load_settings.split(",")):
            lanes, chunk = spec.split(":")
            graph_lanes = UNSCHEDULED_LANES if lanes == "unscheduled" else int(lanes)
            settings[f"lanes_{lanes}_chunk_{chunk}"] = dataclasses.replace(
                limits, graph_lanes=graph_lanes, chunk_examples=int(chunk))
        under: dict[str, Any] = {}
        for key, server_limits in settings.items():
            with (
                local_server(base, name, server_limits) as (_, port, proc),
                RssMonitor(proc.pid) as mem,
            ):
                heavy_call = session_call(port, name, heavy_body)
                rss_before_heavy = mem.rss()
                heavy_call()  # warm-up, and the 200 check
                rss_before_load = mem.rss()
                phase = under_load(
                    session_call(port, name, body),
                    heavy_call,
                    args.load_requests,
                    args.load_rounds,
                    args.max_heavy,
                )
                phase["graph_lanes"] = server_limits.graph_lanes
                phase["chunk_examples"] = server_limits.chunk_examples
                phase["server_memory_mib"] = {
                    "before_first_max_work_request": round(rss_before_heavy / MIB),
                    "before_load_phases": round(rss_before_load / MIB),
                    "after_run": round(mem.rss() / MIB),
                    "peak_sampled": round(mem.peak / MIB),
                    "vm_hwm": round((vm_hwm(proc.pid) or 0) / MIB) or None,
                }
                under[key] = phase
        scheduled = under["server_defaults"]
        per_run = max(1, min(limits.chunk_rows, limits.chunk_examples // heavy_candidates))
        under["max_work_request"] = {
            "rows": heavy_rows,
            "candidates": heavy_candidates,
            "history_each": history,
            "examples": heavy_rows * heavy_candidates,
            "rows_per_graph_run": per_run,
            "graph_runs": -(-heavy_rows // per_run),
            "body_bytes": len(heavy_body),
        }
        under["caps"] = dataclasses.asdict(limits)
        under["valid_request"] = "1 user, 100 candidates, 100 + 100 history items (as above)"

    overhead = rest["1"]["p50_ms"] - in_process["1"]["p50_ms"] if "1" in rest else None
    result = {
        "benchmark": "serving_default latency: 1 user, 100 candidates, L = 100 (full histories)",
        "history": HISTORY,
        "candidates": CANDIDATES,
        "request_body_bytes": len(body),
        "in_process": in_process,
        "rest_local_server": rest,
        "rest_overhead_ms": round(overhead, 2) if overhead is not None else None,
        "rest_overhead_paired_median_ms": paired,
        "rest_stage_breakdown_ms": stages,
        "small_request": {
            "what": "1 candidate, 1 + 1 history items: the fixed cost of a REST request",
            "in_process": small_local,
            "rest_local_server": small_rest,
            "rest_overhead_ms": round(small_rest["p50_ms"] - small_local["p50_ms"], 2),
            "rest_overhead_paired_median_ms": small_paired,
        },
        "serving_client_predict_p50_ms": client_p50,
        "under_load": under,
        "server_memory_mib": {
            "at_start": round(rss_start / MIB),
            "after_latency_runs": round(rss_after / MIB),
            "vm_hwm": round(hwm / MIB) if hwm else None,
        },
        "goals": GOALS,
        "goals_met": {
            "rest_p99_ms_concurrency_1": rest.get("1", {}).get("p99_ms", 1e9)
            < GOALS["rest_p99_ms_concurrency_1"],
            "rest_overhead_ms": overhead is not None and overhead < GOALS["rest_overhead_ms"],
            "p99_under_load_over_unloaded_p99": scheduled["p99_ratio"]
            < GOALS["p99_under_load_over_unloaded_p99"],
        },
        "model": model_config,
        "model_dir": args.model_dir
        or "built by build_model (1 short epoch; weights do not change the cost)",
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "notes": (
            "Shared machine: other jobs may run during the measurement (see "
            "load_average_1m); compare ratios within this run, not absolute figures "
            "across runs."
        ),
        "git_commit": git_commit(),
        "tensorflow": tf.__version__,
        "machine": machine(),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
