"""The HTTP side of the local server: aiohttp transport around `RestApi`.

`LocalServer` binds a port, reads request bodies (with a size cap and a read timeout),
refuses methods outside libevent's set, runs predicts on a thread pool (the event loop
never runs TensorFlow) and turns every failure into a JSON `{"error": ...}` reply
(parser-level errors and the connection cap: `tfnegseq.serving.connections`).
`serve_in_thread` runs one for a `with` block; `build_repository` turns the CLI's
model flags into a `ModelRepository`; `stop_gracefully` stops a server subprocess.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web

from tfnegseq.serving._models import ModelRepository
from tfnegseq.serving.app import V1_PATH, RestApi
from tfnegseq.serving.connections import ALLOW_HEADER, ALLOWED_METHODS, JsonErrorServer
from tfnegseq.serving.limits import Limits
from tfnegseq.serving.model_config import ModelConfig, VersionPolicy, load_model_config
from tfnegseq.serving.status import error_body

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_DRAIN_LIMIT = 64 * 1024 * 1024


class _BadBody(Exception):
    """A request body the server will not use: `status` and the client's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LocalServer:
    """The REST server on an asyncio loop; `start()`/`stop()` run on that loop.

    Args:
        repository: ModelRepository. Started (loaded) by `start()`.
        host: str. Interface to bind. Defaults to "127.0.0.1".
        port: int. Port; 0 picks a free one (see `self.port`). Defaults to 8501.
        max_body_bytes: int. Request body cap. Defaults to 16 MiB.
        num_threads: int or None. Inference threads. Defaults to max(4, CPUs).
        shutdown_timeout: float. Seconds to wait for in-flight requests on stop.
            Defaults to 30.
        limits: Limits or None. Work per request (rows, candidates, history, examples)
            and per graph run, timeouts, connection cap. Defaults to `Limits()`.
    """

    def __init__(
        self,
        repository: ModelRepository,
        host: str = "127.0.0.1",
        port: int = 8501,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        num_threads: int | None = None,
        shutdown_timeout: float = 30.0,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.api = RestApi(repository, self.limits)
        self.host, self.port = host, port
        self.max_body_bytes = max_body_bytes
        self.shutdown_timeout = shutdown_timeout
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_threads or max(4, os.cpu_count() or 1), thread_name_prefix="predict"
        )
        self._runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:8501`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Loads the models (in a thread), then binds and starts serving."""
        await asyncio.get_running_loop().run_in_executor(None, self.api.repository.start)
        server = JsonErrorServer(
            self.handle,
            max_connections=self.limits.max_connections,
            idle_timeout=self.limits.idle_timeout,
            access_log=None,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=self.shutdown_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        logger.info("Exporting HTTP/REST API at:%s:%d ...", self.host, self.port)

    async def stop(self) -> None:
        """Stops accepting, finishes in-flight requests, stops polling."""
        if self._runner is not None:
            await self._runner.cleanup()
        self.executor.shutdown(wait=True)
        self.api.repository.stop()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp handler for every method and path."""
        start = time.perf_counter()
        method, path = request.method, request.rel_url.raw_path
        force_close = method == "CONNECT"  # the parser now treats the stream as a tunnel
        headers = {}
        try:
            if method not in ALLOWED_METHODS:
                status, payload = 405, error_body(f"Method {method} is not allowed")
                headers["Allow"] = ALLOW_HEADER
            else:
                body = await self._read_body(request)
                if not V1_PATH.fullmatch(path):
                    message = f"The requested URL {path} was not found on this server."
                    status, payload = 404, error_body(message)
                elif method == "POST":
                    loop = asyncio.get_running_loop()
                    status, payload = await loop.run_in_executor(
                        self.executor, self.api.process, method, path, body, ""
                    )
                else:
                    origin = request.headers.get("Origin", "")
                    status, payload = self.api.process(method, path, body, origin)
        except _BadBody as e:
            logger.debug("Bad body for %s %s: %s", method, path, e)
            status, payload, force_close = e.status, error_body(str(e)), True
            if e.status == 408:  # send now and close: no lingering for a stalled body
                response = web.Response(status=408, body=payload, content_type="application/json")
                response.force_close()
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
                return response
        except Exception as e:  # a bug here must not take the server down
            logger.exception("Unhandled error for %s %s", method, path)
            status, payload = 500, error_body(f"Internal error: {type(e).__name__}: {e}")
        response = web.Response(
            status=status, body=payload, content_type="application/json", headers=headers
        )
        if force_close:
            response.force_close()
        logger.debug(
            '%s "%s %s" %d %dB %.1fms', request.remote, method, request.rel_url, status,
            len(payload), 1000 * (time.perf_counter() - start),
        )  # fmt: skip
        return response

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        """The (decoded) body; 413 past the cap (draining a little more so the client
        reads the reply), 400 when it does not decode as its Content-Encoding says, 408
        when it does not arrive within `limits.body_read_timeout` seconds."""
        cap, size = self.max_body_bytes, 0
        declared = request.content_length or 0
        chunks = []
        try:
            async with asyncio.timeout(self.limits.body_read_timeout):
                if declared <= cap + _DRAIN_LIMIT:
                    async for chunk in request.content.iter_any():
                        size += len(chunk)
                        if size <= cap:
                            chunks.append(chunk)
                        elif size > cap + _DRAIN_LIMIT:
                            break
        except TimeoutError:
            raise _BadBody(
                408,
                f"Request body not received within {self.limits.body_read_timeout:g} s "
                f"({size} bytes arrived; --body_read_timeout_seconds)",
            ) from None
        except web.RequestPayloadError as e:
            encoding = request.headers.get("Content-Encoding")
            what = f"as Content-Encoding: {encoding}" if encoding else "as sent"
            detail = str(e.__cause__ or e).strip().splitlines()[-1].strip()
            raise _BadBody(400, f"Request body could not be read {what}: {detail}") from None
        if size > cap or declared > cap:
            raise _BadBody(
                413,
                f"Request body of {max(size, declared)} bytes exceeds the limit of {cap} bytes "
                "(--max_body_bytes)",
            )
        return b"".join(chunks)


def build_repository(
    model_base_path: str | None = None,
    model_name: str = "default",
    model_config_file: str | None = None,
    version_labels: Mapping[str, int] | None = None,
    model_version_policy: str | None = None,
    file_system_poll_wait_seconds: float = 2.0,
    max_num_load_retries: int = 5,
) -> ModelRepository:
    """Builds (without loading) the repository the CLI flags describe.

    With `model_base_path`, one model named `model_name`; its policy defaults to
    `latest` (TF Serving's default), or `all` when `version_labels` are given. With
    `model_config_file`, the models, policies and labels of that file.

    Raises:
        ValueError: for contradictory flags or a bad config file (the message names
            the file); OSError when the file cannot be read.
    """
    if (model_base_path is None) == (model_config_file is None):
        raise ValueError("Give exactly one of `model_base_path` and `model_config_file`.")
    if model_config_file is not None:
        if version_labels or model_version_policy:
            raise ValueError(
                "With `model_config_file`, set version_labels and model_version_policy in the file."
            )
        configs = load_model_config(model_config_file)
    else:
        assert model_base_path is not None
        policy = VersionPolicy.parse(
            model_version_policy or ("all" if version_labels else "latest")
        )
        configs = [ModelConfig(model_name, model_base_path, policy, dict(version_labels or {}))]
    return ModelRepository(configs, file_system_poll_wait_seconds, max_num_load_retries)


def stop_gracefully(proc: Any, timeout: float = 30.0) -> int:
    """SIGTERM a server subprocess, wait up to `timeout` s (then kill); returns its exit
    code. Closes its stderr pipe if it has one."""
    import signal
    import subprocess

    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return int(proc.returncode)
    finally:
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.contextmanager
def serve_in_thread(
    model_base_path: str | None = None,
    model_name: str = "default",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    limits: Limits | None = None,
    **repository_kwargs: Any,
) -> Iterator[LocalServer]:
    """Runs a `LocalServer` on a background thread for the `with` block.

    Keyword arguments other than those named go to `build_repository`; `limits`
    defaults to `Limits()`. Yields the
    started server (`server.url`, `server.port`); stops it gracefully on exit.

    Example:
        >>> with serve_in_thread("/models/ctr", "ctr") as server:  # doctest: +SKIP
        ...     requests.get(f"{server.url}/v1/models/ctr").json()
    """
    repository = build_repository(model_base_path, model_name, **repository_kwargs)
    server = LocalServer(repository, host, port, max_body_bytes, limits=limits)
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[None] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def run() -> None:
        try:
            await server.start()
        except BaseException as e:
            started.set_exception(e)
            return
        started.set_result(None)
        await stop.wait()
        await server.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        started.result()
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        loop.close()
