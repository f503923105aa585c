"""Model kinds: a new family is one package plus one registry entry.

The toy kind below (an item-popularity CTR model) lives only in this file. It is
registered, then trained, evaluated and exported through the same CLIs
(`tfnegseq.train.main`, `tfnegseq.export.main`) as the built-in kinds, without any
change to train.py, evaluate.py or export.py.
"""

import dataclasses
import json
import os
from typing import Literal

import keras
import numpy as np
import pytest
import yaml
from keras import ops
from pydantic import StrictFloat
from pydantic.dataclasses import dataclass
from sklearn.metrics import roc_auc_score

from tfnegseq import kinds
from tfnegseq.config import SECTION, ConfigError, ModelSection, load_config
from tfnegseq.embeddings import EmbeddingTables


@dataclass(config=SECTION)
class PopularityConfig(ModelSection):
    kind: Literal["popularity"] = "popularity"
    initial_logit: StrictFloat = 0.0


@keras.saving.register_keras_serializable(package="tfnegseq_test")
class PopularityModel(keras.Model):
    """logit = b + w[item]: one learned score per item, read through EmbeddingTables."""

    def __init__(self, items, initial_logit=0.0, **kwargs):
        super().__init__(**kwargs)
        self.items, self.initial_logit = items, initial_logit
        self.tables = EmbeddingTables()
        self.scores = keras.layers.Embedding(items, 1, embeddings_initializer="zeros",
                                             dtype="float32", name="scores")
        self.bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(
            initial_logit), name="bias")

    def call(self, inputs, training=None):
        rows = self.tables.lookup(self, self.scores, inputs["item_id"], "float32")  # [B, 1]
        logit = ops.squeeze(rows, -1) + self.bias
        return {"probability": ops.sigmoid(logit), "logit": logit}

    def compile(self, optimizer="adam", loss=None, **kwargs):
        assert loss is None
        super().compile(optimizer=optimizer,
                        loss=keras.losses.BinaryCrossentropy(from_logits=True), **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return super().compute_loss(x, y, y_pred["logit"], sample_weight, training)

    def get_compile_config(self):
        return {k: v for k, v in (super().get_compile_config() or {}).items() if k != "loss"}

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))

    def get_config(self):
        return {**super().get_config(), "items": self.items,
                "initial_logit": self.initial_logit}


class PopularityKind(kinds.ModelKind):
    name = "popularity"
    config_class = PopularityConfig
    samples_task = "ctr"
    metric_keys = ("auc",)

    def model_inputs(self, cfg):
        return ["item_id"]

    def build_model(self, cfg, vocab_sizes):
        return PopularityModel(vocab_sizes["item_id"], cfg.model.initial_logit)

    def metrics(self, outputs):
        from tfnegseq import metrics

        return {"auc": metrics.auc(outputs["label"], outputs["probability"]),
                "eval_examples": int(len(outputs["label"]))}

    def export_module(self, model, processor, cfg):
        import tensorflow as tf

        def score_examples(examples):
            features, _ = processor(examples)
            return {"probability": model({"item_id": features["item_id"]})["probability"]}

        module = tf.Module()
        module.model_variables = list(model.variables)
        module.lookup_tables = [processor.lookups[n].lookup_table for n in sorted(processor.lookups)]
        module.score_examples = tf.function(
            score_examples, input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        signatures = {"score_examples": module.score_examples.get_concrete_function()}
        return module, signatures, {"score_examples": {"inputs": {"examples": "string [B]"}}}


@pytest.fixture
def popularity_kind():
    kind = kinds.register_kind(PopularityKind())
    yield kind
    kinds.unregister_kind(kind.name)


def test_unregistered_kind_is_refused_at_load(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": {"kind": "popularity"}}))
    with pytest.raises(ConfigError, match=r"model\.kind: must be one of \['cain', 'ctr', 'sequential'\]"):
        load_config(p)


def test_a_kind_cannot_be_registered_twice(popularity_kind):
    with pytest.raises(ValueError, match="already registered"):
        kinds.register_kind(PopularityKind())


def test_toy_kind_trains_evaluates_and_exports_through_the_clis(
        popularity_kind, tiny_samples, tmp_path, capsys):
    import tensorflow as tf

    from tfnegseq import export, train
    from tfnegseq.data.input import make_dataset

    base, _, _ = tiny_samples
    raw = base.to_dict()
    raw["model"] = {"kind": "popularity", "initial_logit": -1.0}
    raw["train"].update(run_dir=str(tmp_path / "run"), epochs=2, export=False)
    config = tmp_path / "popularity.yaml"
    config.write_text(yaml.safe_dump(raw))

    assert train.main(["--config", str(config)]) == 0
    assert "auc=" in capsys.readouterr().out
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    assert metrics["config"]["model"] == {"kind": "popularity", "initial_logit": -1.0}

    # evaluation: the kind's metric over the whole split, checked with sklearn
    cfg = load_config(config)
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    ys, ps = [], []
    for features, y in make_dataset(cfg.output.dir, "test", cfg, 512):
        ps.append(np.asarray(model(features)["probability"]))
        ys.append(np.asarray(y))
    y, p = np.concatenate(ys), np.concatenate(ps)
    assert metrics["eval_examples"] == len(y)
    # evaluation ran compiled (XLA), this loop eagerly: scores may differ in the last
    # bit, which reorders near-tied items (the model has one score per item)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)

    # export through the CLI, then serve the signature with TensorFlow alone
    assert export.main(["--run-dir", str(tmp_path / "run")]) == 0
    version = capsys.readouterr().out.strip().splitlines()[-1]
    meta = json.load(open(os.path.join(version, "assets.extra", "tfnegseq_export.json")))
    assert meta["model_kind"] == "popularity"
    loaded = tf.saved_model.load(version)
    examples = [r.numpy() for r in tf.data.TFRecordDataset(
        tf.io.gfile.glob(os.path.join(cfg.output.dir, "test", "*")), compression_type="GZIP"
    ).take(5)]
    served = loaded.signatures["score_examples"](examples=tf.constant(examples))["probability"]
    from tfnegseq.data.input import FeatureProcessor

    features, _ = FeatureProcessor.from_data_dir(cfg.output.dir, cfg)(tf.constant(examples))
    np.testing.assert_allclose(served.numpy(), np.asarray(model(features)["probability"]),
                               rtol=1e-6)


def test_the_ctr_kind_is_built_in():
    kind = kinds.get_kind("ctr")
    assert kind.samples_task == "ctr" and kind.metric_keys == ("auc", "gauc", "logloss")
    assert dataclasses.is_dataclass(kind.config_class)
