"""Loading a config: YAML -> sections, `--set` overrides, the tagged union on
`model.kind`, cross-section rules, and the error messages (file + key path)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
import typing
from typing import Any

from pydantic import StrictStr, TypeAdapter, ValidationError

from tfnegseq.config.sections import Config, ConfigError, ModelSection

# ------------------------------------------------------------------------ errors

_TYPE_WORDS = {
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true/false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dataclass_type": "expected a mapping",
    "dict_type": "expected a mapping",
}


_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


@functools.cache
def _yaml_loader() -> Any:
    """`yaml.SafeLoader` that also reads `1e-3` and `5E+2` as floats (YAML 1.2; PyYAML
    follows YAML 1.1, where a float needs a dot, and would hand the string "1e-3" to a
    float key). Built on first use: the model classes import this module, and need no
    YAML (GPU box)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789"))
    return Loader


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section_at(loc: tuple[Any, ...], model_cls: type | None) -> Any:
    """The dataclass that holds the keys at `loc` (for "known keys here")."""
    cls: Any = Config
    for part in loc:
        if isinstance(part, int) or not dataclasses.is_dataclass(cls):
            return None
        if cls is Config and part == "model" and model_cls is not None:
            cls = model_cls
            continue
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls if dataclasses.is_dataclass(cls) else None


def _message(err: Any, prefix: tuple[Any, ...], model_cls: type | None) -> str:
    loc = prefix + tuple(err["loc"])
    kind = err["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = _section_at(loc[:-1], model_cls)
        names = sorted(f.name for f in dataclasses.fields(known)) if known else []
        return f"unknown key {_path(loc)!r}; known keys here: {names}"
    if kind == "value_error":
        text = str(err["ctx"]["error"])
        if loc and text.startswith(f"{_path(loc)}."):  # already names its full key
            return text
        # "name: ..." from a section validator names a key of that section
        head = re.match(r"^([A-Za-z_][A-Za-z0-9_\[\]]*):", text)
        if loc and head:
            return f"{_path(loc)}.{text}"
        return f"{_path(loc)}: {text}" if loc else text
    if kind == "literal_error":
        return f"{_path(loc)}: must be one of {err['ctx']['expected']}. Received: {err['input']!r}"
    words = _TYPE_WORDS.get(kind, err["msg"])
    return f"{_path(loc)}: {words}. Received: {err['input']!r}"


def _validate(adapter: TypeAdapter[Any], raw: Any, where: str, prefix: tuple[Any, ...] = (),
              model_cls: type | None = None) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as e:
        lines = [_message(err, prefix, model_cls) for err in e.errors(include_url=False)]
        raise ConfigError(f"{where}: " + f"\n{where}: ".join(lines)) from None


# ---------------------------------------------------------------------- loading

_CONFIG = TypeAdapter(Config)


def _model_section(raw: Any, where: str) -> tuple[ModelSection, type]:
    """Validates the `model` mapping with its kind's section class (the tagged union)."""
    from tfnegseq import kinds

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: model: expected a mapping. Received: {raw!r}")
    name = raw.get("kind", "ctr")
    if name not in kinds.kind_names():
        raise ConfigError(
            f"{where}: model.kind: must be one of {kinds.kind_names()}. Received: {name!r}"
        )
    cls = kinds.get_kind(name).config_class
    return _validate(TypeAdapter(cls), raw, where, ("model",), cls), cls


def validate_section(cls: type, raw: dict[str, Any], where: str, key: str = "model") -> Any:
    """One section (`cls`, a section dataclass) from a mapping, with the loader's
    messages (`ConfigError` naming `where` and `key.<field>`)."""
    return _validate(TypeAdapter(cls), raw, where, (key,), cls)


def _cross_check(cfg: Config, where: str) -> None:
    """Rules that span sections; the kind adds its own (`ModelKind.check_config`)."""
    from tfnegseq import kinds

    kind = kinds.get_kind(cfg.model.kind)
    metric = cfg.train.early_stopping_metric
    if metric and metric not in kind.metric_keys:
        raise ConfigError(
            f"{where}: train.early_stopping_metric: must be one of the {kind.name!r} kind's "
            f"metrics {list(kind.metric_keys)}. Received: {metric!r}"
        )
    try:
        kind.check_config(cfg)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def config_from_dict(
    raw: dict[str, Any], overrides: list[str] | None = None, where: str = "<dict>"
) -> Config:
    """Builds a validated `Config` from a mapping plus `--set` style overrides."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping. Received: {raw!r}")
    raw = copy.deepcopy(raw or {})  # YAML dates etc. reach the sections, which refuse them
    for item in overrides or []:
        _apply_override(raw, item, where)
    model, model_cls = _model_section(raw.pop("model", None), where)
    cfg = _validate(_CONFIG, {**raw, "model": model}, where, (), model_cls)
    _cross_check(cfg, where)
    # source.path is checked separately: only jobs that read the raw log need it
    return cfg


def _apply_override(raw: dict[str, Any], item: str, where: str) -> None:
    if "=" not in item:
        raise ConfigError(f"{where}: --set {item!r}: expected key.path=value")
    path, text = item.split("=", 1)
    parts = path.strip().split(".")
    node = raw
    cls: Any = Config
    for i, p in enumerate(parts):
        if cls is ModelSection:  # the model section's keys depend on its kind
            from tfnegseq import kinds

            name = node.get("kind", "ctr") if isinstance(node, dict) else "ctr"
            if name in kinds.kind_names():
                cls = kinds.get_kind(name).config_class
        names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
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
        value = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: --set {path}: cannot parse value {text!r}: {e}") from e
    if value is None and text.strip() == "":
        value = ""
    # A string-typed key keeps the literal text ("--set name=007" stays "007").
    if cls in (str, StrictStr) and not isinstance(value, str):
        value = text
    node[parts[-1]] = value


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Config:
    """Loads a YAML config file. Raises `ConfigError` naming the file and key."""
    where = str(path)
    if os.path.isdir(path):
        raise ConfigError(f"{where}: is a directory, not a config file")
    if not os.path.exists(path):
        raise ConfigError(f"{where}: config file not found")
    import yaml

    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.load(f, Loader=_yaml_loader())
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not a UTF-8 text file ({e.reason})") from e
    if raw is None:
        raise ConfigError(
            f"{where}: the file is empty; write at least one section (e.g. `name: my_run`), "
            "or `{}` for every default"
        )
    return config_from_dict(raw, overrides, where)


def require_trainable(cfg: Config, where: str = "config") -> None:
    """Fails unless the model kind trains on the samples the config builds
    (`samples.task`). Checked by training, before any data is read; the Beam job may
    build samples of any task whatever the `model` section says."""
    from tfnegseq import kinds

    kind = kinds.get_kind(cfg.model.kind)
    if cfg.samples.task != kind.samples_task:
        raise ConfigError(
            f"{where}: samples.task: model.kind {cfg.model.kind!r} trains on "
            f"{kind.samples_task!r} samples. Received: {cfg.samples.task!r}"
        )


def require_source(cfg: Config, where: str = "config") -> None:
    """Fails unless `source.path` is set and exists (checked by jobs that read it)."""
    p = cfg.source.path
    if not p:
        raise ConfigError(f"{where}: source.path: must be set (directory of the raw log)")
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
