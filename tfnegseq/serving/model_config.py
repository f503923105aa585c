"""Which models the local server serves: TF Serving's `models.config` and version policies.

`load_model_config(path)` / `parse_model_config(text)` read a text-format
`ModelServerConfig` (`model_config_list { config { ... } }`) with protobuf's
`text_format` into `ModelConfig`s. Every field is checked against the proto (as TF
Serving does); only `name`, `base_path`, `model_version_policy` and `version_labels`
are used. `VersionPolicy` is TF Serving's `ServableVersionPolicy` (`latest`, `all`,
`specific`), also parsed from the CLI form `latest:2`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's `ServableVersionPolicy`: which versions on disk to serve.

    Args:
        kind: str. `"latest"`, `"all"` or `"specific"`. Defaults to `"latest"`.
        num_versions: int. How many of the highest versions `latest` serves.
            Defaults to 1.
        versions: tuple of int. The versions `specific` serves. Defaults to ().
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, on_disk: Sequence[int]) -> set[int]:
        """Returns the versions to serve out of those found on disk."""
        if self.kind == "all":
            return set(on_disk)
        if self.kind == "specific":
            return set(on_disk) & set(self.versions)
        return set(sorted(on_disk)[-self.num_versions :]) if self.num_versions > 0 else set()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """Parses the CLI form: `latest`, `latest:N`, `all` or `specific:1,2`."""
        kind, _, arg = text.partition(":")
        try:
            if kind == "latest":
                return cls("latest", int(arg) if arg else 1)
            if kind == "all" and not arg:
                return cls("all")
            if kind == "specific" and arg:
                return cls("specific", versions=tuple(int(v) for v in arg.split(",")))
        except ValueError:
            pass
        raise ValueError(
            "`model_version_policy` must be latest[:N], all or specific:V1,V2. "
            f"Received: model_version_policy={text}"
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One `config { ... }` entry of a `model_config_list`.

    Args:
        name: str. The model name used in URLs.
        base_path: str. The directory holding the numeric version directories.
        policy: VersionPolicy. Which versions to serve. Defaults to latest 1.
        version_labels: mapping of str to int. Label -> version. Defaults to {}.
    """

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


def parse_model_config(text: str, source: str = "models.config") -> list[ModelConfig]:
    """Parses a TF Serving `ModelServerConfig` text proto into `ModelConfig`s.

    The text is read by protobuf's `text_format` into
    `tensorflow_serving.config.model_server_config_pb2.ModelServerConfig`, so every
    form TF Serving accepts is accepted and anything it refuses (an unknown field, a
    wrong type, unbalanced braces) is refused.

    Args:
        text: str. The file's contents.
        source: str. What to call the text in errors (the file name).
            Defaults to "models.config".

    Raises:
        ValueError: `"<source>: <what is wrong>"`, with line:column for syntax and
            type errors; also when there is no `model_config_list`, a config lacks
            `name` or `base_path`, or two configs share a name.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        where = re.sub(r"^(\d+:\d+) : ", r"\1: ", str(e))  # "line:column: message"
        raise ValueError(f"{source}:{where} ({_EXPECTED})") from None
    if proto.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{source}: no `model_config_list` block ({_EXPECTED})")
    configs = []
    for i, entry in enumerate(proto.model_config_list.config):
        missing = [f for f in ("name", "base_path") if not getattr(entry, f)]
        if missing:
            raise ValueError(
                f"{source}: config #{i + 1} of model_config_list has no "
                f"{' or '.join(missing)} ({_EXPECTED})"
            )
        configs.append(
            ModelConfig(
                entry.name,
                entry.base_path,
                _policy(entry.model_version_policy),
                dict(entry.version_labels),
            )
        )
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{source}: duplicate model name(s) {', '.join(duplicates)}")
    return configs


_EXPECTED = (
    'expected model_config_list { config { name: "..." base_path: "..." } ... }, '
    "see serving/models.config"
)


def _policy(proto: Any) -> VersionPolicy:
    """`ServableVersionPolicy` proto -> `VersionPolicy` (unset: latest 1, as TF Serving)."""
    choice = proto.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=tuple(proto.specific.versions))
    if choice == "latest":
        # file_system_storage_path_source.cc: max(num_versions, 1).
        return VersionPolicy("latest", max(proto.latest.num_versions, 1))
    return VersionPolicy()


def load_model_config(path: str) -> list[ModelConfig]:
    """Reads and parses the `models.config` file at `path` (see `parse_model_config`).

    Raises:
        ValueError: `"<path>: <what is wrong>"` for a file that does not parse.
        OSError: when the file cannot be read (the message names it).
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_model_config(text, source=path)
