"""Typed configuration: YAML -> validated dataclasses, `--set` overrides, errors at load.

Every section is a pydantic dataclass (`extra="forbid"`, strict scalar types): unknown
keys, wrong types and impossible values are refused when the file is loaded, and the
error names the file and the key path (`c.yaml: samples.max_history: must be >= 0.
Received: -1`). Every default lives in the field that declares it.

The `model` section is a tagged union on `model.kind`: the kind registry
(`tfnegseq.kinds`) maps each kind to its section class, so a kind that does not exist
(or a backbone its section does not know) is refused at load, before any data is read.
Cross-section rules (the kind's samples task, sequence budgets against
`samples.max_history`) are checked after the sections themselves.

A config file is read with `yaml.safe_load`; overrides `--set a.b=c` are applied to the
raw mapping (the value parsed as YAML, so `--set samples.max_history=50` is an int).

Example:
    cfg = load_config("configs/movielens_100k.yaml", ["output.dir=/tmp/out"])
    cfg.samples.max_history  # 100
"""


from tfnegseq.config.loading import (
    add_config_args,
    config_from_dict,
    load_config,
    require_source,
    require_trainable,
    validate_section,
)
from tfnegseq.config.sections import (
    SECTION,
    Condition,
    Config,
    ConfigError,
    GenericColumns,
    ModelSection,
    OutputConfig,
    RulesConfig,
    SamplesConfig,
    SimulateConfig,
    SourceConfig,
    SplitConfig,
    TrainConfig,
    VocabConfig,
    at_least,
    in_range,
)

__all__ = [
    "SECTION", "Condition", "Config", "ConfigError", "GenericColumns", "ModelSection",
    "OutputConfig", "RulesConfig", "SamplesConfig", "SimulateConfig", "SourceConfig",
    "SplitConfig", "TrainConfig", "VocabConfig", "add_config_args", "at_least",
    "config_from_dict", "in_range", "load_config", "require_source", "require_trainable",
    "validate_section",
]
