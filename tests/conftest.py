"""Shared test fixtures and environment."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
ML100K = pathlib.Path(os.environ.get("TFNEGSEQ_ML100K", REPO.parent / "shared" / "data" / "ml-100k"))


@pytest.fixture
def ml100k_dir():
    if not (ML100K / "u.data").exists():
        pytest.skip(f"MovieLens-100K not found at {ML100K} (set TFNEGSEQ_ML100K); it may not be redistributed")
    return ML100K
