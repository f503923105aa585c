"""The config's sections: pydantic dataclasses, one per YAML section.

Every default lives in the field that declares it. Sections refuse unknown keys
(`extra="forbid"`) and take strict scalars (StrictInt refuses 1.5 and true); their
validators raise `ValueError("<key>: ...")`, which the loader (`tfnegseq.config.loading`)
turns into a `ConfigError` naming the file and the full key path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import field
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic.dataclasses import dataclass

# Unknown keys refused; scalars are strict (StrictInt refuses 1.5 and true) by type.
SECTION = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A config that cannot be used. The message names the file and the key."""


# --------------------------------------------------------------------------- rules

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COND_RE = re.compile(
    rf"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*({_NUMBER})\s*$"
)


@dataclasses.dataclass(frozen=True)
class Condition:
    """`column op value`, e.g. `watch_ratio >= 2.0`. Written in YAML as that string."""

    column: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str, where: str) -> Condition:
        m = _COND_RE.match(str(text))
        if not m:
            raise ConfigError(
                f"{where}: cannot parse rule {text!r}; expected 'column OP number' "
                "with OP one of >=, <=, ==, !=, >, <"
            )
        return cls(m.group(1), m.group(2), float(m.group(3)))

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"


# ------------------------------------------------------------------------ sections


def at_least(obj: Any, minimum: float, *names: str) -> None:
    """Raises `ValueError("name: must be >= m. Received: v")` unless every named field
    of `obj` is >= `minimum` (section validators use it; the loader adds file and path)."""
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise ValueError(f"{name}: must be >= {minimum}. Received: {value}")


def in_range(obj: Any, name: str, low: float, high: float, *, high_open: bool = False) -> None:
    """Raises unless `low <= obj.name <= high` (`< high` with `high_open`)."""
    value = getattr(obj, name)
    if not (low <= value < high if high_open else low <= value <= high):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name}: must be in [{low:g}, {high:g}{bracket}. Received: {value}")


@dataclass(config=SECTION)
class GenericColumns:
    """Column mapping for `source.kind: generic` (CSV / Parquet / JSONL)."""

    user_id: StrictStr = "user_id"
    item_id: StrictStr = "item_id"
    timestamp: StrictStr = "timestamp"
    value: StrictStr = "value"
    timestamp_unit: Literal["s", "ms", "us"] = "s"


@dataclass(config=SECTION)
class SourceConfig:
    """Where the raw log is and how to read it.

    kind: which adapter reads `path`. `synthetic` logs are written by
    `python -m tfnegseq.data.simulate` in the KuaiRec layout, so they are read with
    `kind: kuairec`. `path` is checked by the jobs that read it (`require_source`).
    """

    kind: Literal["movielens", "kuairec", "kuairand", "taobao", "taac", "generic"] = "kuairec"
    path: StrictStr = ""
    # KuaiRec: which interaction matrix; KuaiRand: the log files (defaults used if empty).
    files: list[StrictStr] = field(default_factory=list)
    # generic only
    format: Literal["csv", "parquet", "jsonl"] = "csv"
    delimiter: StrictStr = ","
    has_header: StrictBool = True
    columns: GenericColumns = field(default_factory=GenericColumns)
    # numeric columns kept on each event (usable by rules); adapters add their own.
    extra_columns: list[StrictStr] = field(default_factory=list)
    # Plausible event times, ms since the epoch: events outside go to the dead letters
    # (reason "timestamp") before the split is computed. None: 1970-01-01 and the job's
    # start plus one day.
    min_timestamp: StrictInt | None = None
    max_timestamp: StrictInt | None = None

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if (self.min_timestamp is not None and self.max_timestamp is not None
                and self.min_timestamp >= self.max_timestamp):
            raise ValueError(
                f"min_timestamp: must be < max_timestamp. Received: {self.min_timestamp} >= "
                f"{self.max_timestamp}"
            )
        return self


@dataclass(config=SECTION)
class RulesConfig:
    """Label and polarity rules: each is a list of conditions, all must hold (AND).

    An event is a positive history token if `positive` holds, a negative one if
    `negative` holds, neutral otherwise (neutral events are targets, never history
    tokens). `label` decides the binary target. Empty `label` means label = positive.
    """

    label: list[StrictStr] = field(default_factory=lambda: ["watch_ratio >= 2.0"])
    positive: list[StrictStr] = field(default_factory=lambda: ["watch_ratio >= 2.0"])
    negative: list[StrictStr] = field(default_factory=lambda: ["watch_ratio < 2.0"])

    @model_validator(mode="after")
    def _check(self) -> RulesConfig:
        for name in ("label", "positive", "negative"):
            for i, c in enumerate(getattr(self, name)):
                try:
                    Condition.parse(c, f"rules.{name}[{i}]")
                except ConfigError as e:
                    raise ValueError(str(e)) from None
        if not self.positive:
            raise ValueError("positive: needs at least one condition")
        return self


@dataclass(config=SECTION)
class NegativesConfig:
    """Generated negatives for logs that hold only positives (Taobao UserBehavior), as
    MIMN / ETA build them (`tfnegseq.data.negatives`).

    kind: "none" (default) or "uniform": the negative's item is drawn uniformly from
      the item catalogue (every item of the log) minus every item of the user.
    mode: "add": each label-1 target also yields `per_positive` label-0 samples;
      "replace": MIMN's coin flip, each label-1 target is replaced by one label-0
      sample with probability 0.5 (`per_positive` must be 1).
    A generated sample has its positive's user, timestamp, order and history lists.
    Draws depend only on (`seed`, user): the job is deterministic under retries.
    """

    kind: Literal["none", "uniform"] = "none"
    mode: Literal["add", "replace"] = "add"
    per_positive: StrictInt = 1
    seed: StrictInt = 0

    @model_validator(mode="after")
    def _check(self) -> NegativesConfig:
        at_least(self, 1, "per_positive")
        at_least(self, 0, "seed")
        if self.mode == "replace" and self.per_positive != 1:
            raise ValueError(
                f"per_positive: must be 1 with mode 'replace'. Received: {self.per_positive}")
        return self


@dataclass(config=SECTION)
class SamplesConfig:
    """How samples are built from each user's timeline."""

    task: Literal["ctr", "sequential"] = "ctr"
    max_history: StrictInt = 100
    lifelong_length: StrictInt = 0
    # "timestamp": history = events with a strictly smaller timestamp (ties excluded);
    # "order": history = events earlier in the stable (timestamp, input order) sort.
    before: Literal["timestamp", "order"] = "timestamp"
    user_features: list[StrictStr] = field(default_factory=list)
    item_features: list[StrictStr] = field(default_factory=list)
    # ctr task: item features (a subset of `item_features`) also emitted per lifelong
    # item, as lists `life_item_<f>` beside `life_item_id` (looked up in `item_<f>`'s
    # vocabulary); CAIN's PEG reads them for its "most_interacted" input (Table 5)
    lifelong_item_features: list[StrictStr] = field(default_factory=list)
    # sequential task: keep only users/items with at least this many events (SINE: 10)
    min_core: StrictInt = 0
    # rounds of iterative k-core filtering in the Beam job (the manifest says if more
    # would still have removed events)
    min_core_rounds: StrictInt = 10
    # sequential task: longest kept sequence (most recent events)
    max_sequence: StrictInt = 200
    # samples per Arrow batch inside one user (bounds memory for very long users); fewer
    # when long lists would make a batch hold more than
    # `tfnegseq.data.samples.MAX_BATCH_VALUES` values
    batch_size: StrictInt = 2048
    # ctr task, target thinning (history lists keep every event): an event is a target
    # when (n - order) % target_stride == 0 (n = the user's event count, so the last event
    # always is), and of those only the last `max_targets_per_user` (0 = all). The split
    # is assigned to targets (`last_k` counts targets).
    target_stride: StrictInt = 1
    max_targets_per_user: StrictInt = 0
    # ctr task: generated label-0 samples for positive-only logs (see NegativesConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    # ctr task: which negatives fill each sample's negative history (`neg_item_id` /
    # `neg_order`; the mixed-polarity paper's ablation, §4.5.4 and Figure 8;
    # `tfnegseq.data.samples.negative_history`). Only negatives strictly before the
    # target (`before`) are ever candidates; other lists (`pos_*`, `life_*`) unchanged.
    #   "recent": the most recent `max_history` negatives, true items (the default);
    #   "random": min(count, size) of ALL the user's negatives before the target, drawn
    #     uniformly without replacement (recency ignored), oldest first with their true
    #     orders and items ("random history");
    #   "catalogue": the slots of "recent" (the most recent `size` negatives: their
    #     count and orders), each item replaced by one drawn uniformly from the item
    #     catalogue (every item id of the log, the user's own items included): "random
    #     universe". A negative event gets the same replacement in every sample.
    # negative_history_size: the list's length cap, 1..max_history; 0 = max_history;
    # only with "random" / "catalogue". The model keeps the most recent floor((1-r) L) of
    # the list, so "random" with size floor((1-r) L) makes those a uniform random subset.
    # negative_history_seed: draws are a pure function of (this seed, user id, the
    # target's order) for "random", (this seed, user id, the negative event's order) for
    # "catalogue": independent of batching, thinning, workers and retries; only with
    # "random" / "catalogue" (separate from `negatives.seed`).
    negative_history: Literal["recent", "random", "catalogue"] = "recent"
    negative_history_size: StrictInt = 0
    negative_history_seed: StrictInt = 0

    @model_validator(mode="after")
    def _check(self) -> SamplesConfig:
        at_least(self, 0, "max_history", "lifelong_length", "min_core", "min_core_rounds",
                 "max_targets_per_user")
        if self.max_history == 0 and self.task == "ctr":
            raise ValueError("max_history: must be > 0 for the ctr task")
        at_least(self, 3, "max_sequence")
        at_least(self, 1, "batch_size", "target_stride")
        at_least(self, 0, "negative_history_size", "negative_history_seed")
        if self.task != "ctr":
            if self.target_stride != 1 or self.max_targets_per_user != 0:
                raise ValueError("target_stride / max_targets_per_user: only for the ctr task")
            if self.negatives.kind != "none":
                raise ValueError("negatives: only for the ctr task")
            if self.negative_history != "recent":
                raise ValueError(f"negative_history: only for the ctr task. Received: "
                                 f"{self.negative_history!r}")
        if self.negative_history == "recent" and (self.negative_history_size
                                                  or self.negative_history_seed):
            raise ValueError(
                "negative_history_size / negative_history_seed: only with negative_history "
                f"'random' or 'catalogue' (0 with 'recent'). Received: negative_history_size="
                f"{self.negative_history_size}, negative_history_seed="
                f"{self.negative_history_seed}")
        if self.lifelong_item_features:
            outside = [f for f in self.lifelong_item_features if f not in self.item_features]
            if outside:
                raise ValueError(
                    f"lifelong_item_features: {outside} are not in item_features "
                    f"{self.item_features} (a lifelong item's feature comes from the same "
                    "item table and vocabulary)")
            if len(set(self.lifelong_item_features)) != len(self.lifelong_item_features):
                raise ValueError(f"lifelong_item_features: each feature once. Received: "
                                 f"{self.lifelong_item_features}")
            if self.task != "ctr" or self.lifelong_length == 0:
                raise ValueError(
                    "lifelong_item_features: only for the ctr task with lifelong_length > 0 "
                    f"(the lists sit beside life_item_id). Received: task={self.task!r}, "
                    f"lifelong_length={self.lifelong_length}")
        if self.negative_history_size > self.max_history:
            raise ValueError(
                f"negative_history_size: must be <= max_history ({self.max_history}); 0 "
                f"means max_history. Received: {self.negative_history_size}")
        return self

    def negative_history_length(self) -> int:
        """The length cap of the negative history (`negative_history_size`, 0 meaning
        `max_history`)."""
        return self.negative_history_size or self.max_history


@dataclass(config=SECTION)
class SplitConfig:
    """Train / valid / test split.

    temporal: samples with timestamp >= `test_start` are test, >= `valid_start` valid;
      if the starts are not given, `valid_fraction` / `test_fraction` of the global
      time span (min..max timestamp) are used.
    user: a stable hash of the user id puts whole users into valid / test.
    last_k: each user's last `k` target events are test, the `k` before valid.
    """

    kind: Literal["temporal", "user", "last_k"] = "temporal"
    valid_fraction: StrictFloat = 0.1
    test_fraction: StrictFloat = 0.1
    valid_start: StrictInt | None = None  # ms since epoch
    test_start: StrictInt | None = None
    k: StrictInt = 1
    salt: StrictStr = "tfnegseq"

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        in_range(self, "valid_fraction", 0.0, 1.0)
        in_range(self, "test_fraction", 0.0, 1.0)
        if self.valid_fraction + self.test_fraction > 1.0:
            raise ValueError(
                "valid_fraction + test_fraction must be <= 1. Received: "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        at_least(self, 1, "k")
        if (self.valid_start is None) != (self.test_start is None):
            raise ValueError("set both valid_start and test_start, or neither")
        if self.valid_start is not None and self.test_start is not None:
            if self.valid_start > self.test_start:
                raise ValueError("valid_start: must be <= test_start")
        return self


@dataclass(config=SECTION)
class OutputConfig:
    """Where the Beam job writes, and which ids its vocabulary files keep.

    `vocab_min_count` / `vocab_max_size` trim the written vocabularies (ids counted on
    the training split); the defaults keep every id. Training applies `vocab.*` on top.
    """

    dir: StrictStr = "build/samples"
    shards: StrictInt = 4
    vocab_min_count: StrictInt = 1
    vocab_max_size: StrictInt = 0  # 0 = every id

    @model_validator(mode="after")
    def _check(self) -> OutputConfig:
        if not self.dir:
            raise ValueError("dir: must be set")
        at_least(self, 1, "shards", "vocab_min_count")
        at_least(self, 0, "vocab_max_size")
        return self


@dataclass(config=SECTION)
class SimulateConfig:
    """Size and shape of the synthetic short-video log (see tfnegseq.data.simulate)."""

    seed: StrictInt = 0
    num_users: StrictInt = 500
    num_items: StrictInt = 2000
    num_topics: StrictInt = 20
    events_per_user_min: StrictInt = 20
    events_per_user_max: StrictInt = 2000
    target_positive_rate: StrictFloat = 0.1
    drift: StrictFloat = 0.3
    start_timestamp: StrictFloat = 1593878400.0  # 2020-07-04, like KuaiRec

    @model_validator(mode="after")
    def _check(self) -> SimulateConfig:
        at_least(self, 1, "num_users", "num_items", "num_topics", "events_per_user_min")
        if self.events_per_user_max < self.events_per_user_min:
            raise ValueError("events_per_user_max: must be >= events_per_user_min")
        if not 0.0 < self.target_positive_rate < 1.0:
            raise ValueError(
                "target_positive_rate: must be in (0, 1). "
                f"Received: {self.target_positive_rate}"
            )
        in_range(self, "drift", 0.0, 1.0)
        return self


@dataclass(config=SECTION)
class VocabConfig:
    """How raw ids map to embedding rows (built from the Beam job's vocabularies)."""

    max_size: StrictInt = 0  # 0 = every id that passes min_count
    min_count: StrictInt = 1
    oov_buckets: StrictInt = 16

    @model_validator(mode="after")
    def _check(self) -> VocabConfig:
        at_least(self, 0, "max_size")
        at_least(self, 1, "min_count", "oov_buckets")
        return self


@dataclass(config=SECTION)
class ModelSection:
    """Base of every kind's `model` section: `kind` selects the family
    (`tfnegseq.kinds`); each kind's subclass adds its own keys."""

    kind: StrictStr = "ctr"


@dataclass(config=SECTION)
class TrainConfig:
    data_dir: StrictStr = ""  # Beam output; defaults to output.dir
    run_dir: StrictStr = "runs/default"
    epochs: StrictInt = 1
    batch_size: StrictInt = 2048
    learning_rate: StrictFloat = 1e-3
    seed: StrictInt = 0
    jit_compile: StrictBool = True
    # TensorFlow only, with jit_compile false: XLA auto-clustering of everything but the
    # matmuls, which run on oneDNN (AMX under mixed_bfloat16). See tfnegseq/runtime.py.
    auto_clustering: StrictBool = False
    mixed_precision: Literal["float32", "mixed_bfloat16"] = "float32"
    # Embedding-table updates: "dense" (Keras Adam: every row, every step) or
    # "row_sparse" (lazy Adam on the rows a batch uses; tfnegseq/optimizers.py). With
    # tables much larger than batch_size * (sequence_length + 1) rows, row_sparse is
    # faster; with small tables, dense.
    embedding_updates: Literal["dense", "row_sparse"] = "dense"
    shuffle_buffer: StrictInt = 100_000
    # Read the training files and parse batches in a fixed order (tf.data
    # `deterministic=True`), so two runs with the same seed see the same batches and train
    # the same model. Off by default: out-of-order reads keep the input ahead of the step.
    deterministic_input: StrictBool = False
    # Deterministic op implementations (TensorFlow's enable_op_determinism;
    # tfnegseq/runtime.py): with deterministic_input, two runs of one seed train the same
    # model bit for bit. Without it, multi-threaded CPU kernels may sum in another order.
    deterministic_ops: StrictBool = False
    steps_per_epoch: StrictInt = 0  # 0 = whole split
    eval_split: Literal["valid", "test"] = "test"
    # Early stopping on the validation split: every `validate_every` epochs the kind's
    # metrics are computed on "valid"; training stops after `early_stopping_patience`
    # validations without a better `early_stopping_metric` (one of the kind's metrics;
    # "" = off) and the best validated weights are restored before the final evaluation.
    early_stopping_metric: StrictStr = ""
    early_stopping_patience: StrictInt = 5
    validate_every: StrictInt = 1
    # metrics.json's validation.selected holds, per metric, the `eval_split` metrics of
    # the model of that metric's best validation epoch (its weights kept in memory,
    # scored once when training ends: tfnegseq/validation.py)
    test_at_validation: StrictBool = False
    # export a TF Serving SavedModel to <run_dir>/export/<name>/<version> after training
    export: StrictBool = True
    # epoch checkpoints kept in <run_dir>/checkpoints/ (the most recent ones); null =
    # every epoch's, 0 = none (a resumed run restores from backup/ either way)
    keep_checkpoints: StrictInt | None = None
    # Training on several devices or hosts (tfnegseq/distribute.py, docs/distributed.md).
    # TensorFlow backend: "mirrored" (tf.distribute.MirroredStrategy over the local GPUs,
    # or over `cpu_devices` logical CPU devices); "multi_worker" is refused (Keras 3's fit
    # fails under MultiWorkerMirroredStrategy, keras-team/keras#20585). JAX backend:
    # "data_parallel" (keras.distribution.DataParallel over every device of every process;
    # several hosts through the KERAS_DISTRIBUTION_* environment variables) and
    # "model_parallel" (ModelParallel: the item table's rows split over `model_shards`
    # devices, the batch over the rest). batch_size stays the global batch.
    distribution: Literal["none", "mirrored", "multi_worker", "data_parallel",
                          "model_parallel"] = "none"
    # split the host CPU into this many logical devices before the backend starts (0 = as
    # it is): CPU-only data parallelism, and how the tests run it on one machine
    cpu_devices: StrictInt = 0
    model_shards: StrictInt = 2  # model_parallel: devices on the mesh's "model" axis

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        at_least(self, 1, "epochs", "batch_size")
        at_least(self, 0, "cpu_devices")
        at_least(self, 1, "model_shards")
        if self.distribution == "multi_worker":
            raise ValueError(
                "distribution: multi_worker (tf.distribute.MultiWorkerMirroredStrategy) is "
                "refused: Keras 3's model.fit fails under it (keras-team/keras#20585, checked "
                "on keras 3.15.1 / TensorFlow 2.21: a PerReplica value reaches a tensor "
                "conversion). For several hosts train on the JAX backend with "
                "distribution: data_parallel (docs/distributed.md)"
            )
        if self.keep_checkpoints is not None:
            at_least(self, 0, "keep_checkpoints")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"learning_rate: must be > 0. Received: {self.learning_rate}")
        at_least(self, 0, "steps_per_epoch")
        at_least(self, 1, "early_stopping_patience", "validate_every")
        if self.early_stopping_metric and self.eval_split == "valid":
            raise ValueError(
                "eval_split: early stopping selects the weights on 'valid', so the final "
                "evaluation must be on 'test'"
            )
        if self.deterministic_ops and not self.deterministic_input:
            raise ValueError("deterministic_ops: needs train.deterministic_input: true (the "
                             "batch order is the other source of run-to-run differences)")
        if self.test_at_validation and not self.early_stopping_metric:
            raise ValueError("test_at_validation: needs train.early_stopping_metric (the "
                             "validation it rides on)")
        if self.auto_clustering and self.jit_compile:
            raise ValueError(
                "auto_clustering: needs train.jit_compile: false (jit_compile compiles the "
                "whole step with XLA; auto_clustering leaves the matmuls out)"
            )
        return self


# Keys a resumed run may change (prefixes of flattened keys; see `Config.model_hash`).
RESUME_FREE = ("name", "simulate.", "train.run_dir", "train.export", "train.epochs",
               "train.keep_checkpoints",
               "train.eval_split", "train.jit_compile", "train.auto_clustering",
               "train.deterministic_input", "train.deterministic_ops", "train.distribution",
               "train.cpu_devices",
               "train.model_shards")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {"a.b.c": value}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    return out


def _default_model() -> ModelSection:
    from tfnegseq import kinds

    return kinds.get_kind("ctr").config_class()


@dataclass(config=SECTION)
class Config:
    """The whole configuration. Each job reads the sections it needs."""

    name: StrictStr = "default"
    source: SourceConfig = field(default_factory=SourceConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelSection = field(default_factory=_default_model)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable hash of the data-building sections (what the samples depend on)."""
        d = self.to_dict()
        keep = {k: d[k] for k in ("source", "rules", "samples", "split")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    def model_hash(self) -> str:
        """Stable hash of what a trained model depends on: every key but those in
        `RESUME_FREE` (where the run lives, how long it trains, how it is evaluated or
        compiled, the simulator). A run resumed with a different hash is refused."""
        flat = {k: v for k, v in flatten(self.to_dict()).items()
                if not k.startswith(RESUME_FREE)}
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]
