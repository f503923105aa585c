"""The `model:` section of the `cain` kind (CAIN and the lifelong-attention baselines).

Paper: `../shared/papers/002_bbf64e76a3eb835d.txt` (CAIN), §3-5; design notes in
`docs/design/cain.md`. Every key of the `ctr` kind's section is here too and configures
the short-term path (eq. 2's short-term interest: the mixed-polarity sequence with
DIN or the Transformer, PBE / TAPF); the keys below configure the lifelong path.

What each baseline of the paper's Table 7 is, as a config:

| model | context | msia_layers | major_attention | peg_layers |
| --- | --- | --- | --- | --- |
| LAP / SIM / ETA / SDIM / TWIN | none | - | lap / sim / eta / sdim / twin | none |
| CAIN w/o MSIA and PEG | tcn | 1 | lap | none |
| CAIN w/o PEG | tcn | 4 | lap | none |
| CAIN | tcn | 4 | lap | all |

Figure 5's context length -1 is `context: none`; 0 is `context: tcn, context_length: 0`
(a per-item dense layer). Table 1's extractors: `context: gru` (a bidirectional GRU,
our reading of "RNN") and `context: self_attention` (one Transformer block over the
whole lifelong sequence); both replace the first TCN layer and need `msia_layers: 1`.
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr, model_validator
from pydantic.dataclasses import dataclass

from tfnegseq.config import SECTION, at_least
from tfnegseq.kinds.ctr.config import CtrModelConfig

# PEG input groups (`peg_inputs`, Table 5) that are not user feature names
DEMOGRAPHIC, BEHAVIORAL, MOST_INTERACTED = "demographic", "behavioral", "most_interacted"
# PEG inputs that are not `user_<f>` features
GROUPS = ("user_id", BEHAVIORAL, MOST_INTERACTED)


@dataclass(config=SECTION)
class CainModelConfig(CtrModelConfig):
    """CAIN (`tfnegseq.models.CainModel`): the CTR model plus a lifelong path.

    `lifelong_length`: items of the lifelong sequence the model reads (the most recent;
    at most `samples.lifelong_length`). `context`: what gives the lifelong items context
    before the major attention ("tcn", "none", "gru", "self_attention").
    `context_length`: the TCN's cl (items on each side); `msia_layers`: TCN layers
    (1 = no MSIA); `strides`: one per layer, or None for 1 then `later_stride`.
    `major_attention`: the lifelong attention on the first layer's outputs (or on the raw
    items with `context: none`); its sizes `top_k` (SIM, ETA, TWIN), `lap_top_k` (LAP's
    k1, k2), `hash_bits` (ETA), `sdim_hashes` / `sdim_hash_bits` (SDIM),
    `lifelong_heads`, `lifelong_attention_dim`. `peg_layers`: which TCN layers get
    per-user kernels (Table 4); `peg_inputs`: what they are generated from (Table 5):
    names of `samples.user_features`, "user_id", "demographic" (every user feature, the
    dataset's profile columns), "behavioral" (statistics of the lifelong lists the
    model reads: `CainModel.behavioral_statistics`) and "most_interacted" (the most
    frequent value of each `samples.lifelong_item_features` among the user's positive
    lifelong events: `CainModel.most_interacted`); None: every user feature.
    `peg_units`: eq. 10's width; `peg_aggregation`: Table 6 ("replace" the
    global kernel, the paper's default; "sum" it with the personalised one; "concat"
    both outputs, then a Dense back to the TCN's width). `lifelong_value_boundaries`:
    bucket edges of `life_value` (the engagement value: rating, watch ratio, behaviour
    code), whose embedding is added to each lifelong item (§3: an item "includes its item
    ID and side information"); empty: no value embedding. `lifelong_polarity`: PBE or
    TAPF on the lifelong tokens before the context extractor (none of the papers
    combines them).
    """

    kind: Literal["cain"] = "cain"  # type: ignore[assignment]
    lifelong_length: StrictInt = 256
    short_term: StrictBool = True
    context: Literal["tcn", "none", "gru", "self_attention"] = "tcn"
    context_length: StrictInt = 7
    msia_layers: StrictInt = 4
    strides: list[StrictInt] | None = None
    later_stride: StrictInt = 4
    tcn_activation: Literal["relu", "linear"] = "relu"
    major_attention: Literal["lap", "sim", "eta", "sdim", "twin", "din"] = "lap"
    top_k: StrictInt = 50
    lap_top_k: list[StrictInt] = field(default_factory=lambda: [256, 64])
    hash_bits: StrictInt = 32
    sdim_hashes: StrictInt = 48
    sdim_hash_bits: StrictInt = 3
    lifelong_heads: StrictInt = 2
    lifelong_attention_dim: StrictInt = 64
    auxiliary_normalization: Literal["softmax", "none"] = "softmax"
    peg_layers: Literal["none", "first", "later", "all"] = "all"
    peg_inputs: list[StrictStr] | None = None
    peg_units: StrictInt = 64
    peg_aggregation: Literal["replace", "sum", "concat"] = "replace"
    lifelong_value_boundaries: list[StrictFloat] = field(default_factory=list)
    lifelong_polarity: Literal["none", "pbe", "tapf"] = "none"
    sim_auxiliary_weight: StrictFloat = 1.0

    @model_validator(mode="after")
    def _check_cain(self) -> CainModelConfig:
        at_least(self, 1, "lifelong_length", "msia_layers", "later_stride", "top_k",
                 "hash_bits", "sdim_hashes", "sdim_hash_bits", "lifelong_heads",
                 "lifelong_attention_dim", "peg_units")
        at_least(self, 0, "context_length")
        if self.strides is not None:
            if len(self.strides) != self.msia_layers or any(s < 1 for s in self.strides):
                raise ValueError(
                    f"strides: needs msia_layers={self.msia_layers} entries, each >= 1. "
                    f"Received: {self.strides}")
        if self.context in ("gru", "self_attention") and self.msia_layers != 1:
            raise ValueError(
                f"msia_layers: context={self.context!r} replaces the TCN and is built with "
                f"one layer only (Table 1). Received: msia_layers={self.msia_layers}")
        if self.context != "tcn" and self.peg_layers != "none":
            raise ValueError(
                f"peg_layers: PEG generates TCN kernels; context={self.context!r} has none. "
                "Set peg_layers: none")
        if self.peg_layers == "later" and self.msia_layers < 2:
            raise ValueError("peg_layers: 'later' needs msia_layers >= 2")
        if len(self.lap_top_k) != 2 or not 1 <= self.lap_top_k[1] <= self.lap_top_k[0]:
            raise ValueError(f"lap_top_k: must be [k1, k2] with 1 <= k2 <= k1. "
                             f"Received: {self.lap_top_k}")
        if self.lifelong_attention_dim % self.lifelong_heads:
            raise ValueError(
                f"lifelong_heads: must divide lifelong_attention_dim="
                f"{self.lifelong_attention_dim}. Received: {self.lifelong_heads}")
        edges = self.lifelong_value_boundaries
        if any(later <= earlier for earlier, later in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"lifelong_value_boundaries: must increase strictly. "
                             f"Received: {edges}")
        if self.sim_auxiliary_weight < 0:
            raise ValueError(f"sim_auxiliary_weight: must be >= 0. "
                             f"Received: {self.sim_auxiliary_weight}")
        return self

    def peg_layer_indices(self) -> list[int]:
        """The TCN layers (0-based) whose kernels PEG generates."""
        n = self.msia_layers
        return {"none": [], "first": [0], "later": list(range(1, n)),
                "all": list(range(n))}[self.peg_layers]
