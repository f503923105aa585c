"""What one request and one client may cost the local server.

`Limits` holds the caps and their defaults (the CLI's flags of the same names, see
`serving/README.md`); `check_request_size` refuses a predict whose rows, candidates,
history or scored examples (rows x candidates) exceed them, before the graph runs;
`rows_per_run` and `run_in_chunks` score a batch a bounded number of rows and examples
at a time. The connection-level limits (body read timeout, idle timeout, connection
cap) are applied by `tfnegseq.serving.local_server`. TF Serving has none of these (its
REST server reads any body and runs any batch).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

import numpy as np

from tfnegseq.serving.status import invalid_argument


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """Caps on the work per request and on slow or idle clients.

    Candidate inputs are the export's `item_id` and `item_<feature>` ([B, C]); history
    inputs are `pos_*` and `neg_*` ([B, W]), lifelong inputs `life_*` ([B, N], the CAIN
    export). Other inputs are only counted in rows.
    The CTR signature scores every (row, candidate) pair with that row's history, so the
    work of a request grows with its examples, rows x C (`examples_per_row`); a
    signature without candidate inputs has one example per row.

    Args:
        max_rows: int. Rows per predict (instances, or the first dimension of columnar
            inputs); more get 400. Defaults to 4096.
        max_candidates: int. Candidates per row (second dimension of candidate
            inputs); more get 400. Defaults to 4096.
        max_history: int. History length (second dimension of history inputs); more
            get 400. Defaults to 4096.
        max_lifelong: int. Lifelong list length (second dimension of `life_*` inputs);
            more get 400. Defaults to 16384 (the CAIN paper's lists reach thousands).
        max_examples: int. Scored examples per predict (rows x candidates per row);
            more get 400. Defaults to 16384.
        chunk_rows: int. Rows per graph run: a bigger batch is scored in chunks of at
            most this many rows and the outputs concatenated. Defaults to 512.
        chunk_examples: int. Examples per graph run: chunks also hold at most this many
            examples; a row with more candidates is scored this many candidates at a
            time (the outputs joined along the candidate axis). Bounds the time of one
            graph run, which is what a small request waits for under load. Defaults to
            256.
        body_read_timeout: float. Seconds to receive a body once the headers are in;
            then 408 and the connection is closed. Defaults to 30.
        idle_timeout: float. Seconds a connection may go without a complete request
            head (a new connection, a slow one, or an idle keep-alive one) before it is
            closed. Defaults to 75.
        max_connections: int. Open connections; one more gets 503 and is closed.
            Defaults to 256.
        graph_lanes: int. Graph runs at the same time (`tfnegseq.serving.scheduler`):
            a request that fits one run goes before the waiting chunks of bigger
            ones. Defaults to half the CPUs, at least 2.
    """

    max_rows: int = 4096
    max_candidates: int = 4096
    max_history: int = 4096
    max_lifelong: int = 16384
    max_examples: int = 16384
    chunk_rows: int = 512
    chunk_examples: int = 256
    body_read_timeout: float = 30.0
    idle_timeout: float = 75.0
    max_connections: int = 256
    graph_lanes: int = dataclasses.field(default_factory=lambda: default_graph_lanes())

    def __post_init__(self) -> None:
        for name in (
            "max_rows", "max_candidates", "max_history", "max_lifelong", "max_examples",
            "chunk_rows",
            "chunk_examples", "max_connections", "graph_lanes",
        ):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value}")
        for name in ("body_read_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"`{name}` must be positive. Received: {name}={value}")


def default_graph_lanes() -> int:
    """Half the CPUs this process may use, at least 2: a small request then runs beside
    the chunk of a big one in progress instead of waiting for it, and several big
    requests cannot fill every core (README, Performance: measured on 2 cores)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(2, cpus // 2)


def _kind(name: str) -> tuple[str, str] | None:
    """(what, flag) for a candidate or history input name, else None."""
    if name == "item_id" or name.startswith("item_"):
        return "candidates", "max_candidates"
    if name.startswith(("pos_", "neg_")):
        return "history entries", "max_history"
    if name.startswith("life_"):
        return "lifelong entries", "max_lifelong"
    return None


def _widest_candidate_input(arrays: Mapping[str, np.ndarray]) -> tuple[int, str | None]:
    """(candidates per row, the input that has them); (1, None) without candidates."""
    widths = [
        (arrays[name].shape[1], name)
        for name in sorted(arrays)
        if arrays[name].ndim >= 2 and _kind(name) == ("candidates", "max_candidates")
    ]
    return max(widths, key=lambda w: w[0], default=(1, None))


def examples_per_row(arrays: Mapping[str, np.ndarray]) -> int:
    """Examples one row scores: the widest candidate input's second dimension, else 1.

    The server knows which inputs hold candidates by name (`item_id`, `item_<f>`, as for
    `max_candidates`); history inputs (`pos_*`, `neg_*`, `life_*`) and others do not
    count.
    """
    return _widest_candidate_input(arrays)[0]


def _rows(arrays: Mapping[str, np.ndarray]) -> int:
    return max((a.shape[0] for a in arrays.values() if a.ndim), default=0)


def check_request_size(arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    """Raises INVALID_ARGUMENT (400) naming the flag when a predict asks too much."""
    for name in sorted(arrays):
        shape = arrays[name].shape
        if shape and shape[0] > limits.max_rows:
            raise invalid_argument(
                f"Request has {shape[0]} rows (input '{name}'); the limit is "
                f"{limits.max_rows} (--max_rows)"
            )
        kind = _kind(name)
        if kind is not None and len(shape) >= 2:
            what, flag = kind
            limit = getattr(limits, flag)
            if shape[1] > limit:
                raise invalid_argument(
                    f"Input '{name}' has {shape[1]} {what} per row; the limit is {limit} (--{flag})"
                )
    per_row, where = _widest_candidate_input(arrays)
    rows = _rows(arrays)
    if rows * per_row > limits.max_examples:
        detail = (
            f"{rows} rows x {per_row} candidates (input '{where}')" if where else f"{rows} rows"
        )
        raise invalid_argument(
            f"Request has {rows * per_row} examples ({detail}); the limit is "
            f"{limits.max_examples} (--max_examples)"
        )


def request_examples(arrays: Mapping[str, np.ndarray]) -> int:
    """Examples a predict scores: rows x candidates per row (`examples_per_row`)."""
    return _rows(arrays) * examples_per_row(arrays)


def rows_per_run(arrays: Mapping[str, np.ndarray], limits: Limits) -> int:
    """Rows per graph run: at most `chunk_rows` rows and `chunk_examples` examples, and
    at least one row."""
    per_row = max(1, examples_per_row(arrays))  # an empty candidate list is the graph's error
    return max(1, min(limits.chunk_rows, limits.chunk_examples // per_row))


Run = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def candidates_per_run(arrays: Mapping[str, np.ndarray], limits: Limits) -> int | None:
    """Candidates per graph run when one row holds more than `chunk_examples`
    examples (its candidates are then scored `chunk_examples` at a time, so no graph
    run holds more); None when a row fits in one run."""
    per_row = examples_per_row(arrays)
    return limits.chunk_examples if per_row > limits.chunk_examples else None


def _candidate_inputs(inputs: Mapping[str, np.ndarray]) -> list[str]:
    return [n for n in inputs
            if inputs[n].ndim >= 2 and _kind(n) == ("candidates", "max_candidates")]


def _run_candidates(run: Run, inputs: Mapping[str, np.ndarray], per_run: int) -> dict:
    """`run(inputs)` for one chunk of rows, its candidates `per_run` at a time, the
    outputs joined along the candidate axis; the chunk is run whole when an output is
    not `[rows, candidates, ...]` or the candidate inputs disagree in width."""
    names = _candidate_inputs(inputs)
    widths = {inputs[n].shape[1] for n in names}
    if len(widths) != 1 or (width := widths.pop()) <= per_run:
        return run(inputs)
    rows = _rows(inputs)
    parts = []
    for start in range(0, width, per_run):
        size = min(per_run, width - start)
        chunk = {k: (v[:, start : start + size] if k in names else v) for k, v in inputs.items()}
        outputs = run(chunk)
        if any(v.ndim < 2 or v.shape[:2] != (rows, size) for v in outputs.values()):
            return run(inputs)
        parts.append(outputs)
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}


def run_in_chunks(run: Run, inputs: Mapping[str, np.ndarray], chunk_rows: int,
                  chunk_candidates: int | None = None) -> dict:
    """`run(inputs)`, a batch of at most `chunk_rows` rows at a time (see `rows_per_run`)
    and, with `chunk_candidates`, at most that many candidates of each row at a time (see
    `candidates_per_run`; the outputs are joined along the candidate axis).

    Chunks only when every input has the same first dimension; when an output of a
    chunk is not one row per input row (or one column per candidate), that part is run
    whole instead.
    """
    def run_rows(part: Mapping[str, np.ndarray]) -> dict:
        return run(part) if chunk_candidates is None else _run_candidates(
            run, part, chunk_candidates)

    rows = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    if len(rows) != 1 or (n := rows.pop()) <= chunk_rows:
        return run_rows(inputs)
    parts = []
    for start in range(0, n, chunk_rows):
        chunk = {k: v[start : start + chunk_rows] for k, v in inputs.items()}
        outputs = run_rows(chunk)
        size = min(chunk_rows, n - start)
        if any(v.ndim == 0 or v.shape[0] != size for v in outputs.values()):
            return run_rows(inputs)
        parts.append(outputs)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
