"""Compressed request bodies on the local server, sent over a raw socket.

A body sent in TCP packets of its own after the headers (as a client that flushes its
headers first does) must be read as promptly as one in the headers' packet: a complete
body that does not decode as its `Content-Encoding` says is 400 at once, naming the
encoding, and a valid one (deflate zlib-wrapped or raw, as aiohttp accepts, and gzip)
scores as the plain JSON request does. Regression: aiohttp's C parser checks a deflate
stream's end only when the last body byte arrives, and reported a stream cut short to
no-one reading the body; the handler waited out the body read timeout (408).
A body that does not all arrive is still 408 after `--body_read_timeout_seconds`.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import socket
import time
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from tests.serving.conftest import expected_probability, instance

pytestmark = pytest.mark.serving
PREDICT = "/v1/models/recommender:predict"
REPLY_WITHIN = 5.0  # seconds; the default body read timeout is 30 s
PACKET_GAP = 0.2  # seconds between the headers' packet and the body's

INST = instance()
PLAIN = json.dumps({"instances": [INST]}).encode()
ZLIB = zlib.compress(PLAIN)
_raw = zlib.compressobj(wbits=-15)
RAW_DEFLATE = _raw.compress(PLAIN) + _raw.flush()
GZIP = gzip.compress(PLAIN)


def send_raw(
    port: int, body: bytes, headers: dict[str, str], pieces: int = 1, timeout: float = REPLY_WITHIN
) -> tuple[int, bytes, float]:
    """POSTs `body` to PREDICT: headers first, then (after a pause) the body in `pieces`
    packets, or everything in one packet when `pieces` is 0; returns (status, reply
    body, seconds from the last byte sent to the whole reply). Fails past `timeout`."""
    lines = [f"POST {PREDICT} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if pieces == 0:
            sock.sendall(head + body)
        else:
            sock.sendall(head)
            step = -(-len(body) // pieces) if body else 1
            for start in range(0, max(len(body), 1), step):
                time.sleep(PACKET_GAP)
                sock.sendall(body[start : start + step])
        sent = time.monotonic()
        data = b""
        try:
            while not _complete(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pytest.fail(f"no complete reply within {timeout:g} s (got {data[:200]!r})")
        elapsed = time.monotonic() - sent
    head_bytes, _, reply = data.partition(b"\r\n\r\n")
    assert head_bytes.startswith(b"HTTP/1."), data[:200]
    return int(head_bytes.split()[1]), reply, elapsed


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@pytest.fixture(scope="module")
def port(local_server) -> int:
    return local_server.port


@pytest.fixture(scope="module")
def plain_scores(port: int) -> list:
    status, reply, _ = send_raw(port, PLAIN, {"Content-Type": "application/json"}, pieces=0)
    assert status == 200, reply
    predictions = json.loads(reply)["predictions"]
    expected = expected_probability(
        2, INST["pos_item_id"], INST["neg_item_id"], INST["item_id"], INST["user_age"]
    )
    np.testing.assert_allclose(predictions[0], expected, rtol=1e-5)
    return predictions


def _invalid() -> Iterator:
    deflate = {
        "one_byte": b"x",  # a zlib header's first byte, then nothing
        "zlib_header_only": ZLIB[:2],
        "truncated_zlib": ZLIB[: len(ZLIB) // 2],
        "truncated_raw": RAW_DEFLATE[: len(RAW_DEFLATE) // 2],
        "zlib_missing_checksum": ZLIB[:-4],
        "junk": bytes([0x12, 0x9A, 0x33, 0xFE]),
        "plain_json": PLAIN,
        "gzip_stream": GZIP,
    }
    gzipped = {
        "junk": bytes([0x12, 0x9A, 0x33, 0xFE]),
        "plain_json": PLAIN,
        "zlib_stream": ZLIB,
        "bad_header": b"\x1f\x8b\x09" + GZIP[3:],
    }
    for name, body in deflate.items():
        yield pytest.param("deflate", body, id=f"deflate-{name}")
    for name, body in gzipped.items():
        yield pytest.param("gzip", body, id=f"gzip-{name}")


@pytest.mark.parametrize("pieces", [1, 0], ids=["body_after_headers", "one_packet"])
@pytest.mark.parametrize("encoding,body", list(_invalid()))
def test_a_body_that_does_not_decode_is_400_at_once(
    port: int, encoding: str, body: bytes, pieces: int
) -> None:
    status, reply, elapsed = send_raw(port, body, {"Content-Encoding": encoding}, pieces)
    assert status == 400, reply
    error = json.loads(reply)["error"]
    assert f"Content-Encoding: {encoding}" in error, error
    assert elapsed < REPLY_WITHIN


@pytest.mark.parametrize("pieces", [1, 3, 0], ids=["body_after_headers", "three_packets",
                                                   "one_packet"])  # fmt: skip
@pytest.mark.parametrize(
    "encoding,body",
    [("deflate", ZLIB), ("deflate", RAW_DEFLATE), ("gzip", GZIP)],
    ids=["deflate_zlib", "deflate_raw", "gzip"],
)
def test_a_valid_compressed_body_scores_as_plain_json(
    port: int, plain_scores: list, encoding: str, body: bytes, pieces: int
) -> None:
    status, reply, _ = send_raw(port, body, {"Content-Encoding": encoding}, pieces)
    assert status == 200, reply
    assert json.loads(reply)["predictions"] == plain_scores


SHORT_BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def short_timeout_port(toy_models: pathlib.Path) -> Iterator[int]:
    from tfnegseq.serving.limits import Limits
    from tfnegseq.serving.server import serve_in_thread

    with serve_in_thread(
        model_config_file=str(toy_models / "models.config"),
        file_system_poll_wait_seconds=0,
        limits=Limits(body_read_timeout=SHORT_BODY_TIMEOUT),
    ) as server:
        yield server.port


@pytest.mark.parametrize(
    "encoding,body", [("deflate", ZLIB), ("gzip", GZIP)], ids=["deflate", "gzip"]
)
def test_a_compressed_body_that_does_not_all_arrive_is_still_408(
    short_timeout_port: int, encoding: str, body: bytes
) -> None:
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        f"Content-Encoding: {encoding}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", short_timeout_port), timeout=10) as sock:
        sock.sendall(head)
        time.sleep(PACKET_GAP)
        sock.sendall(body[: len(body) // 2])  # decodes so far; the rest never comes
        start = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408"), data[:300]
    assert b"--body_read_timeout_seconds" in data
    assert SHORT_BODY_TIMEOUT - PACKET_GAP - 0.1 < elapsed < SHORT_BODY_TIMEOUT + 4
