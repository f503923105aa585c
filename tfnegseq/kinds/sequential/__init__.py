"""The `sequential` kind: next-item recommendation over one ordered sequence per user.

Data: the Beam job's `sequences/` output (`samples.task: sequential`, leave-last-two),
turned into training windows and evaluation candidates by
`tfnegseq.data.sequential_input`. Model: `tfnegseq.models.SequentialRecommender`
(SINE, SASRec, SASRec-N, GRU4Rec, DIN), trained with BPR pairs (eq. 15-16). Evaluation, both
protocols (`tfnegseq.metrics`):

- the paper's: AUC (pooled), GAUC (unweighted mean over users with a skip) and NDCG@2
  of the held-out positive against the passive negatives of the user's split window,
  with a true cutoff at 2 (`ndcg@2`) and without (`ndcg_no_cutoff`, the official code's);
- full ranking: HR@10, NDCG@10 and MRR of the held-out positive against the whole
  catalogue (the vocabulary's kept items), the user's earlier positives excluded.

Ties are pessimistic throughout (a constant model earns nothing). Export: `score`
(raw history + candidates -> scores) and `retrieve` (raw history -> top-K catalogue
items, the history left out), `tfnegseq.kinds.sequential.export`. Importing this
package registers the kind without importing Keras or TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tfnegseq.kinds import register_kind
from tfnegseq.kinds.base import ModelKind
from tfnegseq.kinds.sequential.config import SequentialModelConfig

if TYPE_CHECKING:
    import numpy as np

    from tfnegseq.config import Config

ITEM_VOCAB = "item_id"


class SequentialKind(ModelKind):
    name = "sequential"
    config_class = SequentialModelConfig
    samples_task = "sequential"
    metric_keys = ("auc", "gauc", "ndcg@2", "hr@10", "ndcg@10", "mrr")
    # one example per user, whose windows cost more to parse than to keep (MovieLens-
    # 100K: about 6 MB a split); read at every validation, twice (outputs, then keys)
    cache_validation_input = True

    def check_config(self, cfg: Config) -> None:
        m = cfg.model
        assert isinstance(m, SequentialModelConfig)
        if cfg.train.eval_split not in ("valid", "test"):
            raise ValueError(
                f"train.eval_split: the sequential kind evaluates on 'valid' or 'test' "
                f"(leave-last-two). Received: {cfg.train.eval_split!r}")
        if cfg.train.embedding_updates != "dense":
            raise ValueError("train.embedding_updates: the sequential kind supports only "
                             "'dense'")

    def model_inputs(self, cfg: Config) -> list[str]:
        return ["inputs", "input_negatives", "target", "candidates", "exclude"]

    def make_datasets(self, cfg: Config, data_dir: str, processor: Any) -> tuple[Any, Any]:
        from tfnegseq.data.sequential_input import make_sequential_dataset

        m, tc = cfg.model, cfg.train
        assert isinstance(m, SequentialModelConfig)
        common = dict(max_len=m.max_length, negative_rule=m.negative_rule,
                      max_candidates=m.max_candidates,
                      item_vocab=processor.vocabularies[ITEM_VOCAB])
        train_ds = make_sequential_dataset(
            data_dir, "train", tc.batch_size, training=True, seed=tc.seed,
            shuffle_buffer=tc.shuffle_buffer, deterministic=tc.deterministic_input,
            length_buckets=m.length_buckets, **common)
        eval_ds = make_sequential_dataset(data_dir, tc.eval_split, tc.batch_size,
                                          length_buckets=m.length_buckets, **common)
        return train_ds, eval_ds

    def build_model(self, cfg: Config, vocab_sizes: Mapping[str, int]) -> Any:
        import dataclasses

        from tfnegseq.models.sequential import SequentialRecommender

        return SequentialRecommender(
            num_items=vocab_sizes[ITEM_VOCAB],
            model=dataclasses.asdict(cfg.model),
            catalogue_start=1 + cfg.vocab.oov_buckets,
            name="sequential_model",
        )

    def evaluation_keys(self, cfg: Config) -> tuple[str, ...]:
        return ("raw_user_id", "candidate_mask")

    def metrics(self, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        import numpy as np

        from tfnegseq import metrics

        paper = metrics.candidate_metrics(
            np.asarray(outputs["target_score"], np.float64),
            np.asarray(outputs["candidate_scores"], np.float64),
            np.asarray(outputs["candidate_mask"]) > 0,
            k=2,
        )
        ranks = np.asarray(outputs["rank"], np.float64)
        full = metrics.full_ranking_metrics(ranks, ks=(10,))
        return {**{k: (float(v) if isinstance(v, float | np.floating) else v)
                   for k, v in paper.items()},
                **{k: float(v) for k, v in full.items()},
                "eval_users": int(len(ranks))}

    def export_module(self, model: Any, processor: Any, cfg: Config):
        from tfnegseq.kinds.sequential import export

        module, k = export.build_module(model, processor, cfg)
        signatures = {
            export.SCORE_SIGNATURE: module.score.get_concrete_function(),
            export.RETRIEVE_SIGNATURE: module.retrieve.get_concrete_function(),
        }
        return module, signatures, export.signature_description(cfg, k)

    def warmup_records(self, model_name: str, examples: list[bytes], cfg: Config) -> list[bytes]:
        from tfnegseq.kinds.sequential import export

        return export.warmup_records(model_name, examples, cfg)


SEQUENTIAL = register_kind(SequentialKind())
