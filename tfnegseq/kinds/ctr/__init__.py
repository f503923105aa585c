"""The `ctr` kind: one impression per example, p(click) from mixed-polarity histories.

Model: `tfnegseq.models.CtrModel` (`model.backbone`: DIN, Transformer, OneTrans,
HyFormer or MixFormer; PBE / TAPF), trained
with cross-entropy on the logit. Evaluation: AUC, GAUC grouped by the raw user id (not
the looked-up row: users mapped to one OOV bucket stay apart), logloss. Export:
`serving_default` (raw histories + candidates -> p(click)) and `score_examples`
(`tfnegseq.kinds.ctr.export`).

Importing this package registers the kind; it imports neither Keras nor TensorFlow
(the hooks import them when called), so a config loads without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tfnegseq.budget import polarity_budget
from tfnegseq.kinds import register_kind
from tfnegseq.kinds.base import ModelKind
from tfnegseq.kinds.ctr.config import CtrModelConfig

if TYPE_CHECKING:
    import numpy as np

    from tfnegseq.config import Config


def item_rows_multiple(cfg: Config) -> int:
    """`train.model_shards` under `train.distribution: model_parallel` (the item table's
    rows split evenly over that many devices), else 1."""
    return cfg.train.model_shards if cfg.train.distribution == "model_parallel" else 1


class CtrKind(ModelKind):
    name = "ctr"
    config_class: type = CtrModelConfig
    samples_task = "ctr"
    metric_keys = ("auc", "gauc", "logloss")

    def check_config(self, cfg: Config) -> None:
        m = cfg.model
        assert isinstance(m, CtrModelConfig)
        if cfg.samples.task != self.samples_task:
            return  # a config that builds other samples; training refuses it
        positives, negatives = polarity_budget(m.positive_ratio, m.sequence_length)
        history = cfg.samples.max_history
        for what, count in (("positives", positives), ("negatives", negatives)):
            if count > history:
                raise ValueError(
                    f"model.sequence_length: floor-share of {what} ({count} of "
                    f"sequence_length={m.sequence_length} at positive_ratio="
                    f"{m.positive_ratio}) exceeds samples.max_history={history}: the extra "
                    "slots would always be padding. Lower model.sequence_length or raise "
                    "samples.max_history (and rebuild the samples)"
                )

    def model_inputs(self, cfg: Config) -> list[str]:
        from tfnegseq.kinds.ctr.export import model_inputs

        return model_inputs(cfg)

    def build_model(self, cfg: Config, vocab_sizes: Mapping[str, int]) -> Any:
        import dataclasses

        from tfnegseq.kinds.ctr.export import side_feature_names
        from tfnegseq.models.ctr import CtrModel

        return CtrModel(
            vocab_sizes=dict(vocab_sizes),
            model=dataclasses.asdict(cfg.model),
            side_features=side_feature_names(cfg),
            row_sparse_gradients=cfg.train.embedding_updates == "row_sparse",
            item_rows_multiple=item_rows_multiple(cfg),
            # padding and OOV rows of every id table start at zero (ZeroLeadingRows)
            unknown_rows=1 + cfg.vocab.oov_buckets,
            name="ctr_model",
        )

    def evaluation_keys(self, cfg: Config) -> tuple[str, ...]:
        return ("raw_user_id",)

    def metrics(self, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        import numpy as np

        from tfnegseq import metrics

        y = np.asarray(outputs["label"], np.float64).reshape(-1)
        p = np.asarray(outputs["probability"], np.float64).reshape(-1)
        users = np.asarray(outputs["raw_user_id"]).reshape(-1)
        return {
            "auc": float(metrics.auc(y, p)),
            "gauc": float(metrics.gauc(users, y, p)),
            "logloss": float(metrics.logloss(y, p)),
            "eval_examples": int(len(y)),
            "eval_positive_rate": float(y.mean()) if len(y) else 0.0,
        }

    def export_module(self, model: Any, processor: Any, cfg: Config):
        from tfnegseq.kinds.ctr import export

        module = export.build_module(model, processor, cfg)
        signatures = {
            export.SERVING_SIGNATURE: module.serve.get_concrete_function(),
            export.EXAMPLES_SIGNATURE: module.score_examples.get_concrete_function(),
        }
        return module, signatures, export.signature_description(cfg)

    def warmup_records(self, model_name: str, examples: list[bytes], cfg: Config) -> list[bytes]:
        from tfnegseq.kinds.ctr import export

        return export.warmup_records(model_name, examples, cfg)


CTR = register_kind(CtrKind())
