"""Where a result came from: package versions and the checkout's git commit.

Written into every `metrics.json`, export metadata and benchmark JSON. Imports neither
TensorFlow nor Keras at module level (the benchmarks for the GPU box have no TF).
"""

from __future__ import annotations

import os
import platform
import subprocess


def git_commit() -> str | None:
    """The checkout's commit (with "+dirty" for local changes), None outside a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, check=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    """tfnegseq, TensorFlow (if importable), Keras and its backend, numpy, Python,
    the processor and the git commit."""
    import keras
    import numpy as np

    import tfnegseq

    try:
        import tensorflow as tf

        tf_version: str | None = tf.__version__
    except ImportError:
        tf_version = None
    return {
        "tfnegseq": tfnegseq.__version__,
        "tensorflow": tf_version,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "git_commit": git_commit(),
    }
