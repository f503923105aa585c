"""The `cain` kind: CTR over a lifelong sequence (CAIN and the lifelong-attention
baselines LAP, SIM, ETA, SDIM, TWIN; paper `../shared/papers/002_bbf64e76a3eb835d.txt`).

One impression per example, like the `ctr` kind, whose samples, metrics (AUC, GAUC by
raw user, logloss) and serving signatures it shares; the samples must carry the
lifelong lists (`samples.lifelong_length` >= `model.lifelong_length`) and the serving
signature takes them as raw lists (`tfnegseq.kinds.ctr.export`). Model:
`tfnegseq.models.CainModel`.

Importing this package registers the kind; it imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tfnegseq.kinds import register_kind
from tfnegseq.kinds.cain.config import (
    BEHAVIORAL,
    DEMOGRAPHIC,
    GROUPS,
    MOST_INTERACTED,
    CainModelConfig,
)
from tfnegseq.kinds.ctr import CtrKind, item_rows_multiple

if TYPE_CHECKING:
    from tfnegseq.config import Config


def peg_input_names(cfg: Config) -> list[str]:
    """PEG's inputs as the config names them (`samples.user_features` entries, `user_id`,
    `behavioral` or `most_interacted`): `model.peg_inputs` with "demographic" expanded
    to every user feature, or every user feature when it is unset. Each name once, in
    order."""
    m = cfg.model
    assert isinstance(m, CainModelConfig)
    names: list[str] = []
    for name in (m.peg_inputs if m.peg_inputs is not None else [DEMOGRAPHIC]):
        for n in (cfg.samples.user_features if name == DEMOGRAPHIC else [name]):
            if n not in names:
                names.append(n)
    return names


def profile_features(cfg: Config) -> list[str]:
    """PEG's inputs as `CainModel` names them (`user_<f>`, `user_id`, `behavioral`,
    `most_interacted`); [] without PEG."""
    assert isinstance(cfg.model, CainModelConfig)
    if cfg.model.peg_layers == "none":
        return []
    return [n if n in GROUPS else f"user_{n}" for n in peg_input_names(cfg)]



class CainKind(CtrKind):
    name = "cain"
    config_class = CainModelConfig

    def check_config(self, cfg: Config) -> None:
        m = cfg.model
        assert isinstance(m, CainModelConfig)
        if cfg.samples.task != self.samples_task:
            return
        if m.short_term:
            super().check_config(cfg)
        available = cfg.samples.lifelong_length
        if m.lifelong_length > available:
            raise ValueError(
                f"model.lifelong_length: {m.lifelong_length} exceeds samples.lifelong_length="
                f"{available} (the lifelong items the samples carry); lower it or raise "
                "samples.lifelong_length and rebuild the samples")
        if m.peg_layers != "none":
            reserved = sorted({DEMOGRAPHIC, BEHAVIORAL, MOST_INTERACTED}
                              & set(cfg.samples.user_features))
            if reserved:
                raise ValueError(
                    f"samples.user_features: {reserved} name PEG input groups "
                    "(model.peg_inputs); rename the user feature")
            names = peg_input_names(cfg)
            unknown = [n for n in names if n not in GROUPS
                       and n not in cfg.samples.user_features]
            if unknown:
                raise ValueError(
                    f"model.peg_inputs: {unknown} are not in samples.user_features "
                    f"{cfg.samples.user_features} (or 'user_id', '{DEMOGRAPHIC}', "
                    f"'{BEHAVIORAL}', '{MOST_INTERACTED}')")
            if MOST_INTERACTED in names and not cfg.samples.lifelong_item_features:
                raise ValueError(
                    f"model.peg_inputs: '{MOST_INTERACTED}' reads the lifelong items' side "
                    "features; set samples.lifelong_item_features (e.g. [category]) and "
                    "rebuild the samples")
            if not names:
                raise ValueError(
                    "model.peg_inputs: PEG needs at least one profile input; "
                    "samples.user_features is empty (use [user_id] or peg_layers: none)")

    def build_model(self, cfg: Config, vocab_sizes: Mapping[str, int]) -> Any:
        import dataclasses

        from tfnegseq.kinds.ctr.export import side_feature_names
        from tfnegseq.models.cain import CainModel

        return CainModel(
            vocab_sizes=dict(vocab_sizes),
            model=dataclasses.asdict(cfg.model),
            side_features=side_feature_names(cfg),
            profile_features=profile_features(cfg),
            lifelong_item_features=list(cfg.samples.lifelong_item_features),
            row_sparse_gradients=cfg.train.embedding_updates == "row_sparse",
            item_rows_multiple=item_rows_multiple(cfg),
            # padding and OOV rows of every id table start at zero (ZeroLeadingRows)
            unknown_rows=1 + cfg.vocab.oov_buckets,
            name="cain_model",
        )


CAIN = register_kind(CainKind())
