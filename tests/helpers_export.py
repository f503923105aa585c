"""Export test helpers: a tiny trained and exported run, and its Keras reference.

`trained_export` trains (1 epoch) and exports a model on the `tiny_samples` fixture's
data once per session; `read_examples`, `raw_rows` and `to_example` read and write the
tf.Examples; `keras_probabilities` scores them through the training path
(`FeatureProcessor` + the reloaded `model.keras`). Used by `tests/test_export.py` and
`tests/test_scoring.py`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic.yaml"


@dataclasses.dataclass
class Exported:
    """A tiny trained run and its export."""

    cfg: Any
    run_dir: str
    version_dir: str
    data_dir: str
    model_name: str


_CACHE: dict[bool, Exported] = {}


def trained_export(tiny_samples, tmp_path_factory, item_features: bool = True) -> Exported:
    """Trains (1 epoch) and exports a tiny model once per session; cached.

    `item_features=False` trains without the item side feature, so the REST test can
    score with `ServingClient.score` (which sends user-level profile features only).
    """
    if item_features not in _CACHE:
        from tfnegseq import train
        from tfnegseq.config import load_config
        from tfnegseq.export import export_run

        _, sets, _ = tiny_samples
        root = tmp_path_factory.mktemp("export_items" if item_features else "export_plain")
        extra = [f"train.run_dir={root}/run", "train.epochs=1"]
        if not item_features:
            extra += ["samples.item_features=[]", "name=plain"]
        cfg = load_config(CONFIG, sets + extra)
        train.run_config(cfg, verbose=0)
        version_dir = export_run(cfg.train.run_dir)
        _CACHE[item_features] = Exported(
            cfg, cfg.train.run_dir, version_dir, cfg.output.dir, cfg.name
        )
    return _CACHE[item_features]


def read_examples(data_dir: str, split: str = "test", count: int | None = None) -> list[bytes]:
    import tensorflow as tf

    from tfnegseq.data.input import split_files

    ds = tf.data.TFRecordDataset(split_files(data_dir, split), compression_type="GZIP")
    if count is not None:
        ds = ds.take(count)
    return [bytes(x.numpy()) for x in ds]


def raw_rows(cfg, examples: list[bytes]) -> list[dict[str, Any]]:
    """Raw (not looked-up) features of each example as Python ints / lists."""
    import tensorflow as tf

    from tfnegseq import schema

    parsed = tf.io.parse_example(tf.constant(examples), schema.parse_spec(cfg.samples))
    rows: list[dict[str, Any]] = [{} for _ in examples]
    for f in schema.features(cfg.samples):
        values = parsed[f.name].to_list() if f.is_list else parsed[f.name].numpy().tolist()
        for row, v in zip(rows, values, strict=True):
            row[f.name] = v
    return rows


def to_example(row: dict[str, Any], cfg: Any = None) -> bytes:
    """A tf.Example of `row`: each feature typed by `cfg`'s sample schema when given
    (float lists may then be empty), else by its Python values (a float list is a
    FloatList)."""
    import tensorflow as tf

    dtypes: dict[str, str] = {}
    if cfg is not None:
        from tfnegseq import schema

        dtypes = {f.name: f.dtype for f in schema.features(cfg.samples)}
    feats = {}
    for name, value in row.items():
        values = value if isinstance(value, list) else [value]
        floats = (dtypes[name] == "float32" if name in dtypes
                  else bool(values) and isinstance(values[0], float))
        if floats:
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        else:
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


HISTORY_LISTS = ("pos_item_id", "pos_order", "neg_item_id", "neg_order")
LIFELONG_LISTS = ("life_item_id", "life_order", "life_polarity", "life_value")


def serving_case(exp: Exported, rows: list[dict[str, Any]], candidates: list[dict[str, Any]],
                 widths: list[int], lists: tuple[str, ...] = HISTORY_LISTS
                 ) -> tuple[dict[str, list], list[bytes]]:
    """`serving_default` inputs for users `rows` (each of `lists` cut to its last
    `widths[b]` entries, the batch left-padded with -1 ids / 0 elsewhere like a client
    does) scoring `candidates`; and the reference tf.Examples (typed by the schema), one
    per (user, candidate) in row-major order."""
    user_side = [f"user_{f}" for f in exp.cfg.samples.user_features]
    item_side = [f"item_{f}" for f in exp.cfg.samples.item_features]
    inputs: dict[str, list] = {"user_id": [r["user_id"] for r in rows]}
    for name in user_side:
        inputs[name] = [r[name] for r in rows]
    cut = [{k: r[k][len(r[k]) - min(w, len(r[k])):] for k in lists}
           for r, w in zip(rows, widths, strict=True)]
    for name in lists:
        width = max(1, max(len(c[name]) for c in cut))
        ids = name.endswith("item_id") or name.startswith("life_item_")  # looked up
        pad: Any = -1 if ids else (0.0 if name == "life_value" else 0)
        inputs[name] = [[pad] * (width - len(c[name])) + c[name] for c in cut]
    inputs["item_id"] = [[c["item_id"] for c in candidates] for _ in rows]
    for name in item_side:
        inputs[name] = [[c[name] for c in candidates] for _ in rows]
    examples = []
    for r, c_hist in zip(rows, cut, strict=True):
        for cand in candidates:
            row = {"user_id": r["user_id"], "timestamp": 0, "order": 0, "label": 0, **c_hist,
                   "item_id": cand["item_id"], **{n: r[n] for n in user_side},
                   **{n: cand[n] for n in item_side}}
            examples.append(to_example(row, exp.cfg))
    return inputs, examples


def keras_probabilities(exp: Exported, examples: list[bytes]) -> np.ndarray:
    """The training path: FeatureProcessor (tf.data parsing and lookups) + model.keras."""
    import keras
    import tensorflow as tf

    import tfnegseq.models.ctr  # noqa: F401
    from tfnegseq.data.input import FeatureProcessor

    key = ("keras", exp.run_dir)
    if key not in _MODELS:
        _MODELS[key] = (
            keras.saving.load_model(os.path.join(exp.run_dir, "model.keras"), compile=False),
            FeatureProcessor.from_data_dir(exp.data_dir, exp.cfg),
        )
    model, processor = _MODELS[key]
    features, _ = processor(tf.constant(examples))
    return np.asarray(model(features, training=False)["probability"], np.float64)


_MODELS: dict[tuple[str, str], Any] = {}
