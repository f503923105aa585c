"""A local server that speaks TF Serving's REST API over SavedModels on disk.

Run `python -m tfnegseq.serving.server --model_base_path DIR [--model_name NAME]` (or
`--model_config_file models.config`); see `serving/README.md`. It serves
`GET /v1/models/NAME[/versions/N|/labels/L][/metadata]` and
`POST /v1/models/NAME[/versions/N|/labels/L]:predict` with the request parsing, reply
shapes, error messages and status codes of TF Serving's
`model_servers/http_rest_api_handler.cc`, `http_rest_api_util.cc`, `http_server.cc`
and `util/json_tensor.cc`. Deviations (all documented in `serving/README.md`): a
request body cap (413), caps on rows / candidates / history / scored examples (400),
graph runs in chunks of rows and examples, a body read timeout (408), a connection cap
(503), 405 instead of libevent's 501 for methods it does not know, JSON bodies on 404s
outside `/v1/`, shapes checked against the signature before the graph runs, input
names in columnar-format errors, and `:classify` / `:regress` answered only with TF
Serving's own errors (400 when no such signature or one of another method, else 501).

This module is the command line. The server is built from `codec` (JSON <-> tensors),
`app` (routing, status, metadata, predict), `limits` (work per request, timeouts,
connection cap), `local_server` (HTTP transport, `serve_in_thread`), `connections`
(aiohttp protocol: JSON parser errors, connection cap), `model_config` (models.config),
`_models` (loading versions) and `status` (error codes); the names below are
re-exported for existing imports.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from tfnegseq.serving.app import RestApi
from tfnegseq.serving.codec import (
    check_shapes,
    parse_json,
    response_from_tensors,
    signature_name,
    tensors_from_request,
)
from tfnegseq.serving.limits import Limits
from tfnegseq.serving.local_server import (
    DEFAULT_MAX_BODY_BYTES,
    LocalServer,
    build_repository,
    serve_in_thread,
    stop_gracefully,
)
from tfnegseq.serving.status import HTTP_STATUS

__all__ = [
    "DEFAULT_MAX_BODY_BYTES", "HTTP_STATUS", "Limits", "LocalServer", "RestApi", "build_repository",
    "check_shapes", "main", "parse_json", "response_from_tensors", "serve_in_thread",
    "signature_name", "stop_gracefully", "tensors_from_request",
]  # fmt: skip

logger = logging.getLogger(__name__)


def _parse_labels(text: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (p.split("=") for p in text.split(",") if p)}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"`version_labels` must look like stable=1,canary=2. Received: {text}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    p = argparse.ArgumentParser(prog="python -m tfnegseq.serving.server", description=__doc__)
    p.add_argument("--model_base_path", help="directory of <version>/saved_model.pb")
    p.add_argument("--model_name", default="default", help="model name (default: default)")
    p.add_argument("--model_config_file", help="TF Serving models.config (text proto)")
    p.add_argument("--port", "--rest_api_port", type=int, default=8501, dest="port")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=2.0)
    p.add_argument("--version_labels", type=_parse_labels, help="e.g. stable=1,canary=2")
    p.add_argument("--model_version_policy", help="latest[:N] | all | specific:1,2")
    p.add_argument("--max_num_load_retries", type=int, default=5)
    p.add_argument("--rest_api_num_threads", type=int, default=None)
    p.add_argument("--log_level", default="INFO", help="DEBUG logs one line per request")
    d = Limits()
    p.add_argument("--max_rows", type=int, default=d.max_rows, help="rows per predict")
    p.add_argument("--max_candidates", type=int, default=d.max_candidates, help="per row")
    p.add_argument("--max_history", type=int, default=d.max_history, help="pos_*/neg_* width")
    p.add_argument("--max_lifelong", type=int, default=d.max_lifelong, help="life_* width")
    p.add_argument(
        "--max_examples", type=int, default=d.max_examples, help="rows x candidates per predict"
    )
    p.add_argument("--chunk_rows", type=int, default=d.chunk_rows, help="rows per graph run")
    p.add_argument(
        "--chunk_examples", type=int, default=d.chunk_examples,
        help="rows x candidates per graph run (at least one row)",
    )  # fmt: skip
    p.add_argument("--body_read_timeout_seconds", type=float, default=d.body_read_timeout)
    p.add_argument("--idle_timeout_seconds", type=float, default=d.idle_timeout)
    p.add_argument("--max_connections", type=int, default=d.max_connections)
    p.add_argument(
        "--graph_lanes", type=int, default=d.graph_lanes,
        help="graph runs at once; single-run requests go before chunks of bigger ones",
    )  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        limits = Limits(
            max_rows=args.max_rows, max_candidates=args.max_candidates,
            max_history=args.max_history, max_lifelong=args.max_lifelong,
            max_examples=args.max_examples,
            chunk_rows=args.chunk_rows, chunk_examples=args.chunk_examples,
            body_read_timeout=args.body_read_timeout_seconds,
            idle_timeout=args.idle_timeout_seconds, max_connections=args.max_connections,
            graph_lanes=args.graph_lanes,
        )  # fmt: skip
        repository = build_repository(
            args.model_base_path, args.model_name, args.model_config_file, args.version_labels,
            args.model_version_policy, args.file_system_poll_wait_seconds,
            args.max_num_load_retries,
        )  # fmt: skip
    except (ValueError, OSError) as e:
        p.error(str(e))
    server = LocalServer(
        repository, args.host, args.port, args.max_body_bytes, args.rest_api_num_threads,
        limits=limits,
    )  # fmt: skip

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        await stop.wait()
        logger.info("Shutting down: finishing in-flight requests")
        await server.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
