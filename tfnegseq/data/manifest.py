"""The Beam job's `manifest.json` (what it built: counts, config, schema hash), read from
a local folder or a bucket. Imports nothing of tfnegseq, so that the input pipeline
(`tfnegseq.data.input`) and the run layout (`tfnegseq.runs`) can both use it."""

from __future__ import annotations

import json
import os
from typing import Any


def read_manifest(data_dir: str) -> dict[str, Any] | None:
    """`<data_dir>/manifest.json` (the Beam job's record of what it built), or None when
    there is none; a bucket path (`gs://...`) is read through TensorFlow's file system,
    imported only then."""
    path = os.path.join(data_dir, "manifest.json")
    if "://" in data_dir:
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as f:
            return dict(json.load(f))
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return dict(json.load(f))
