"""Typed configuration: YAML -> dataclasses, `--set` overrides, validation at load.

Every default lives in the dataclass field that declares it (nowhere else). A config
file is read with `yaml.safe_load`, overrides `--set a.b=c` are applied to the raw
mapping (the value parsed as YAML, so `--set samples.max_history=50` is an int), and
the result is converted to `Config` with exact type checks. Unknown keys, wrong types
and impossible values raise `ConfigError` naming the key path and the file.

Example:
    cfg = load_config("configs/movielens_100k.yaml", ["output.dir=/tmp/out"])
    cfg.samples.max_history  # 100
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A config that cannot be used. The message names the file and the key."""


# --------------------------------------------------------------------------- rules

_COND_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
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


def _at_least(obj: Any, where: str, minimum: float, *names: str) -> None:
    """Raises `ConfigError` unless every named field of `obj` is >= `minimum`."""
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise ConfigError(f"{where}.{name}: must be >= {minimum}. Received: {value}")


@dataclass
class GenericColumns:
    """Column mapping for `source.kind: generic` (CSV / Parquet / JSONL)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    value: str = "value"
    timestamp_unit: Literal["s", "ms", "us"] = "s"


@dataclass
class SourceConfig:
    """Where the raw log is and how to read it.

    kind: which adapter reads `path`. `synthetic` logs are written by
    `python -m tfnegseq.data.simulate` in the KuaiRec layout, so they are read with
    `kind: kuairec`.
    """

    kind: Literal["movielens", "kuairec", "kuairand", "taobao", "generic"] = "kuairec"
    path: str = ""
    # KuaiRec: which interaction matrix; KuaiRand: the log files (defaults used if empty).
    files: list[str] = field(default_factory=list)
    # generic only
    format: Literal["csv", "parquet", "jsonl"] = "csv"
    delimiter: str = ","
    has_header: bool = True
    columns: GenericColumns = field(default_factory=GenericColumns)
    # numeric columns kept on each event (usable by rules); adapters add their own.
    extra_columns: list[str] = field(default_factory=list)

    def validate(self, where: str) -> None:
        if not self.path:
            raise ConfigError(f"{where}.path: must be set (directory of the raw log)")


@dataclass
class RulesConfig:
    """Label and polarity rules: each is a list of conditions, all must hold (AND).

    An event is a positive history token if `positive` holds, a negative one if
    `negative` holds, neutral otherwise (neutral events are targets, never history
    tokens). `label` decides the binary target. Empty `label` means label = positive.
    """

    label: list[str] = field(default_factory=lambda: ["watch_ratio >= 2.0"])
    positive: list[str] = field(default_factory=lambda: ["watch_ratio >= 2.0"])
    negative: list[str] = field(default_factory=lambda: ["watch_ratio < 2.0"])

    def validate(self, where: str) -> None:
        for name in ("label", "positive", "negative"):
            for i, c in enumerate(getattr(self, name)):
                Condition.parse(c, f"{where}.{name}[{i}]")
        if not self.positive:
            raise ConfigError(f"{where}.positive: needs at least one condition")

    def conditions(self, name: str) -> list[Condition]:
        return [Condition.parse(c, f"rules.{name}") for c in getattr(self, name)]


@dataclass
class SamplesConfig:
    """How samples are built from each user's timeline."""

    task: Literal["ctr", "sequential"] = "ctr"
    max_history: int = 100
    lifelong_length: int = 0
    # "timestamp": history = events with a strictly smaller timestamp (ties excluded);
    # "order": history = events earlier in the stable (timestamp, input order) sort.
    before: Literal["timestamp", "order"] = "timestamp"
    user_features: list[str] = field(default_factory=list)
    item_features: list[str] = field(default_factory=list)
    # sequential task: keep only users/items with at least this many events (SINE: 10)
    min_core: int = 0
    # rounds of iterative k-core filtering in the Beam job (the manifest says if more
    # would still have removed events)
    min_core_rounds: int = 10
    # sequential task: longest kept sequence (most recent events)
    max_sequence: int = 200
    # samples per Arrow batch inside one user (bounds memory for very long users)
    batch_size: int = 2048

    def validate(self, where: str) -> None:
        _at_least(self, where, 0, "max_history", "lifelong_length", "min_core", "min_core_rounds")
        if self.max_history == 0 and self.task == "ctr":
            raise ConfigError(f"{where}.max_history: must be > 0 for the ctr task")
        _at_least(self, where, 3, "max_sequence")
        _at_least(self, where, 1, "batch_size")


@dataclass
class SplitConfig:
    """Train / valid / test split.

    temporal: samples with timestamp >= `test_start` are test, >= `valid_start` valid;
      if the starts are not given, `valid_fraction` / `test_fraction` of the global
      time span (min..max timestamp) are used.
    user: a stable hash of the user id puts whole users into valid / test.
    last_k: each user's last `k` target events are test, the `k` before valid.
    """

    kind: Literal["temporal", "user", "last_k"] = "temporal"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    valid_start: int | None = None  # ms since epoch
    test_start: int | None = None
    k: int = 1
    salt: str = "tfnegseq"

    def validate(self, where: str) -> None:
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{where}.{name}: must be in [0, 1]. Received: {v}")
        if self.valid_fraction + self.test_fraction > 1.0:
            raise ConfigError(
                f"{where}: valid_fraction + test_fraction must be <= 1. Received: "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        _at_least(self, where, 1, "k")
        if (self.valid_start is None) != (self.test_start is None):
            raise ConfigError(f"{where}: set both valid_start and test_start, or neither")
        if self.valid_start is not None and self.test_start is not None:
            if self.valid_start > self.test_start:
                raise ConfigError(f"{where}.valid_start: must be <= test_start")


@dataclass
class OutputConfig:
    dir: str = "build/samples"
    shards: int = 4

    def validate(self, where: str) -> None:
        if not self.dir:
            raise ConfigError(f"{where}.dir: must be set")
        _at_least(self, where, 1, "shards")


@dataclass
class SimulateConfig:
    """Size and shape of the synthetic short-video log (see tfnegseq.data.simulate)."""

    seed: int = 0
    num_users: int = 500
    num_items: int = 2000
    num_topics: int = 20
    events_per_user_min: int = 20
    events_per_user_max: int = 2000
    target_positive_rate: float = 0.1
    drift: float = 0.3
    start_timestamp: float = 1593878400.0  # 2020-07-04, like KuaiRec

    def validate(self, where: str) -> None:
        _at_least(self, where, 1, "num_users", "num_items", "num_topics", "events_per_user_min")
        if self.events_per_user_max < self.events_per_user_min:
            raise ConfigError(f"{where}.events_per_user_max: must be >= events_per_user_min")
        if not 0.0 < self.target_positive_rate < 1.0:
            raise ConfigError(
                f"{where}.target_positive_rate: must be in (0, 1). "
                f"Received: {self.target_positive_rate}"
            )
        if not 0.0 <= self.drift <= 1.0:
            raise ConfigError(f"{where}.drift: must be in [0, 1]. Received: {self.drift}")


@dataclass
class VocabConfig:
    """How raw ids map to embedding rows (built from the Beam job's vocabularies)."""

    max_size: int = 0  # 0 = every id that passes min_count
    min_count: int = 1
    oov_buckets: int = 16

    def validate(self, where: str) -> None:
        _at_least(self, where, 0, "max_size")
        _at_least(self, where, 1, "min_count", "oov_buckets")


@dataclass
class ModelConfig:
    """The CTR model (issue: mixed-polarity CTR models)."""

    backbone: Literal["din", "transformer", "onetrans", "hyformer", "mixformer"] = "din"
    polarity: Literal["none", "pbe", "tapf"] = "tapf"
    sequence_length: int = 100
    positive_ratio: float = 0.5
    mode: Literal["interleaved", "grouped"] = "interleaved"
    embedding_dim: int = 64
    mlp_units: list[int] = field(default_factory=lambda: [200, 80])
    attention_units: list[int] = field(default_factory=lambda: [80, 40])
    num_heads: int = 2
    num_layers: int = 1
    dropout: float = 0.0
    # TAPF ablation switches (paper Table 3)
    tapf_polarity_embedding: bool = True
    tapf_gating: bool = True
    tapf_polarity_sign: bool = True
    tapf_residual: bool = True
    tapf_target_interaction: bool = True

    def validate(self, where: str) -> None:
        if not 0.0 <= self.positive_ratio <= 1.0:
            raise ConfigError(
                f"{where}.positive_ratio: must be in [0, 1]. Received: {self.positive_ratio}"
            )
        if self.sequence_length < 1:
            raise ConfigError(
                f"{where}.sequence_length: must be >= 1. Received: {self.sequence_length}"
            )
        if self.embedding_dim < 1:
            raise ConfigError(f"{where}.embedding_dim: must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: must be in [0, 1). Received: {self.dropout}")
        if self.num_heads < 1 or self.embedding_dim % self.num_heads:
            raise ConfigError(f"{where}.num_heads: must be >= 1 and divide embedding_dim")


@dataclass
class TrainConfig:
    data_dir: str = ""  # Beam output; defaults to output.dir
    run_dir: str = "runs/default"
    epochs: int = 1
    batch_size: int = 2048
    learning_rate: float = 1e-3
    seed: int = 0
    jit_compile: bool = True
    # TensorFlow only, with jit_compile false: XLA auto-clustering of everything but the
    # matmuls, which run on oneDNN (AMX under mixed_bfloat16). See tfnegseq/runtime.py.
    auto_clustering: bool = False
    mixed_precision: Literal["float32", "mixed_bfloat16"] = "float32"
    # Embedding-table updates: "dense" (Keras Adam: every row, every step) or
    # "row_sparse" (lazy Adam on the rows a batch uses; tfnegseq/optimizers.py). With
    # tables much larger than batch_size * (sequence_length + 1) rows, row_sparse is
    # faster; with small tables, dense.
    embedding_updates: Literal["dense", "row_sparse"] = "dense"
    shuffle_buffer: int = 100_000
    # Read the training files and parse batches in a fixed order (tf.data
    # `deterministic=True`), so two runs with the same seed see the same batches and train
    # the same model. Off by default: out-of-order reads keep the input ahead of the step.
    deterministic_input: bool = False
    steps_per_epoch: int = 0  # 0 = whole split
    eval_split: Literal["valid", "test"] = "test"
    # export a TF Serving SavedModel to <run_dir>/export/<name>/<version> after training
    export: bool = True

    def validate(self, where: str) -> None:
        _at_least(self, where, 1, "epochs", "batch_size")
        if self.learning_rate <= 0:
            raise ConfigError(f"{where}.learning_rate: must be > 0")
        _at_least(self, where, 0, "steps_per_epoch")
        if self.auto_clustering and self.jit_compile:
            raise ConfigError(
                f"{where}.auto_clustering: needs {where}.jit_compile: false (jit_compile "
                "compiles the whole step with XLA; auto_clustering leaves the matmuls out)"
            )


@dataclass
class Config:
    """The whole configuration. Each job reads the sections it needs."""

    name: str = "default"
    source: SourceConfig = field(default_factory=SourceConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable hash of the data-building sections (what the samples depend on)."""
        d = self.to_dict()
        keep = {k: d[k] for k in ("source", "rules", "samples", "split")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _convert(value, a, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: {key}: must be one of {list(args)}. Received: {value!r}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key}: expected a list. Received: {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping. Received: {value!r}")
        return _build(tp, value, key, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true/false. Received: {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer. Received: {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key}: expected a number. Received: {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string. Received: {value!r}")
        return value
    raise ConfigError(f"{where}: {key}: unsupported type {_type_name(tp)}")


def _build(cls: Any, raw: dict[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        full = [f"{prefix}.{k}" if prefix else k for k in unknown]
        raise ConfigError(
            f"{where}: unknown key(s) {full}; known keys here: {sorted(names)}"
        )
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _convert(v, hints[k], key, where)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None and prefix not in ("source",):
        validate(f"{where}: {prefix}" if prefix else where)
    return obj


def _apply_override(raw: dict[str, Any], item: str, where: str) -> None:
    if "=" not in item:
        raise ConfigError(f"{where}: --set {item!r}: expected key.path=value")
    path, text = item.split("=", 1)
    parts = path.strip().split(".")
    node = raw
    cls: Any = Config
    for i, p in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if p not in names:
            raise ConfigError(
                f"{where}: --set {path}: unknown key {'.'.join(parts[: i + 1])!r}; "
                f"known keys here: {sorted(names)}"
            )
        cls = typing.get_type_hints(cls)[p]
        if i < len(parts) - 1:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: --set {path}: {p} is not a mapping")
    import yaml  # here, not at module level: the model classes need no YAML (GPU box)

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: --set {path}: cannot parse value {text!r}: {e}") from e
    if value is None and text.strip() == "":
        value = ""
    # A string-typed key keeps the literal text ("--set name=007" stays "007").
    if cls is str and not isinstance(value, str):
        value = text
    node[parts[-1]] = value


def config_from_dict(
    raw: dict[str, Any], overrides: list[str] | None = None, where: str = "<dict>"
) -> Config:
    """Builds a validated `Config` from a mapping plus `--set` style overrides."""
    raw = json.loads(json.dumps(raw or {}))  # deep copy, plain types
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    for item in overrides or []:
        _apply_override(raw, item, where)
    cfg = _build(Config, raw, "", where)
    # source.path is checked separately: only jobs that read the raw log need it
    return cfg


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Config:
    """Loads a YAML config file. Raises `ConfigError` naming the file and key."""
    where = str(path)
    if not os.path.exists(path):
        raise ConfigError(f"{where}: config file not found")
    import yaml

    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {e}") from e
    return config_from_dict(raw, overrides, where)


def require_source(cfg: Config, where: str = "config") -> None:
    """Fails unless `source.path` is set and exists (checked by jobs that read it)."""
    cfg.source.validate(f"{where}: source")
    p = cfg.source.path
    if "://" not in p and not os.path.isdir(p):
        raise ConfigError(f"{where}: source.path: directory not found: {p!r}")


def add_config_args(parser: Any) -> None:
    """Adds `--config` and repeatable `--set key.path=value` to an argparse parser."""
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set samples.max_history=50 (repeatable)",
    )
