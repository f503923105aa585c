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


def build_tiny_samples(root, extra: list[str] | None = None):
    """A small simulated log under `root` turned into samples by the Beam job (the
    synthetic preset with `extra` overrides): (config, the --set list)."""
    from tfnegseq.config import load_config
    from tfnegseq.data import job
    from tfnegseq.data.simulate import simulate_to_dir

    sets = [f"source.path={root}/log", f"output.dir={root}/samples", "simulate.num_users=60",
            "simulate.num_items=300", "simulate.events_per_user_min=20",
            "simulate.events_per_user_max=200", "samples.max_history=20",
            "model.sequence_length=20", "model.embedding_dim=16", "train.batch_size=256",
            "train.shuffle_buffer=1000", f"train.run_dir={root}/run", "train.export=false",
            *(extra or [])]
    cfg = load_config(REPO / "configs" / "synthetic.yaml", sets)
    simulate_to_dir(cfg.simulate, cfg.source.path)
    job.run(cfg)
    return cfg, sets


@pytest.fixture(scope="session")
def tiny_samples(tmp_path_factory):
    """A small simulated log turned into samples by the Beam job: (config, sets, root)."""
    root = tmp_path_factory.mktemp("tiny")
    cfg, sets = build_tiny_samples(root)
    return cfg, sets, str(root)
