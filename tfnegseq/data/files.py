"""File access for the source adapters: local paths, or URLs through `tf.io.gfile`.

A path holding `://` (e.g. `gs://bucket/x`) is remote and read through
`tf.io.gfile`; TensorFlow is imported only then. Any other path uses `os` and the
builtin `open`.
"""

from __future__ import annotations

import io
import os
import posixpath
from typing import IO, Any


def is_remote(path: str) -> bool:
    """True for URLs such as `gs://bucket/x` (read through `tf.io.gfile`)."""
    return "://" in path


def join(directory: str, name: str) -> str:
    """`directory/name`, with `/` for remote paths."""
    if is_remote(directory):
        return posixpath.join(directory, name)
    return os.path.join(directory, name)


def exists(path: str) -> bool:
    """Whether a file or directory (local or remote) exists."""
    if is_remote(path):
        import tensorflow as tf

        return bool(tf.io.gfile.exists(path))
    return os.path.exists(path)


def list_dir(path: str) -> list[str]:
    """File names in a directory (local or remote), sorted."""
    if is_remote(path):
        import tensorflow as tf

        return sorted(n.rstrip("/") for n in tf.io.gfile.listdir(path))
    return sorted(os.listdir(path))


class _GFileRaw(io.RawIOBase):
    """Raw binary stream over a `tf.io.gfile.GFile` (so `io.TextIOWrapper` can decode it)."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def open_binary(path: str) -> IO[bytes]:
    """Opens a file for binary reading: builtin `open`, or `tf.io.gfile.GFile` for URLs."""
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def open_text(path: str, encoding: str = "utf-8", errors: str = "strict") -> IO[str]:
    """Opens a text file (universal newlines): builtin `open`, or `GFile` for URLs.

    `errors` is the codec error handler; logs are read with "surrogateescape", which
    keeps each undecodable byte as one lone surrogate (see
    `tfnegseq.data.lines.undecodable_lines`).
    """
    if is_remote(path):
        import tensorflow as tf

        raw = io.BufferedReader(_GFileRaw(tf.io.gfile.GFile(path, "rb")), 1 << 20)
        return io.TextIOWrapper(raw, encoding=encoding, errors=errors)
    return open(path, encoding=encoding, errors=errors)
