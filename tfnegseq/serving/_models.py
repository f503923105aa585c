"""Model discovery and loading for the local TF-Serving-compatible server.

Mirrors the parts of TF Serving's `ServerCore` that the REST API exposes:

- `parse_model_config` reads the text-proto `models.config` (`model_config_list`
  with `name`, `base_path`, `model_version_policy` and `version_labels`; every
  other field is ignored).
- `ModelRepository` polls each model's base path for numeric version directories
  (`<base>/<version>/saved_model.pb`), loads and unloads versions according to the
  version policy, keeps TF Serving's per-version states (`START`, `LOADING`,
  `AVAILABLE`, `UNLOADING`, `END`) and resolves a request's name / version / label
  to a loaded `Servable` with TF Serving's error codes and messages
  (`tensorflow_serving/model_servers/server_core.cc`,
  `tensorflow_serving/core/manager.h`, `get_model_status_impl.cc`).
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# absl::StatusCode names, indexed by their numeric value (also tf.errors codes).
STATUS_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip


class ServingStatus(Exception):
    """An error with a TF Serving (absl) status code, e.g. `INVALID_ARGUMENT`.

    Args:
        code: str. The absl status code name.
        message: str. The message sent to the client as `{"error": message}`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def invalid_argument(message: str) -> ServingStatus:
    """Returns an `INVALID_ARGUMENT` status (HTTP 400)."""
    return ServingStatus("INVALID_ARGUMENT", message)


# --------------------------------------------------------------------------- config


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


_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|([{}<>\[\]:,;])|([\w.+-]+)"""
)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"models.config: unexpected character {text[pos]!r} at {pos}")
        string, symbol, word = match.groups()
        if string is not None:
            tokens.append(("value", ast.literal_eval(string)))
        elif symbol is not None:
            tokens.append(("sym", symbol))
        elif word is not None:
            tokens.append(("word", word))
        pos = match.end()
    return tokens


def parse_text_proto(text: str) -> dict[str, list[Any]]:
    """Parses protobuf text format into `{field: [values]}` (nested for messages).

    Scalars are kept as str, except whole numbers, which become int. Enough of the
    format for TF Serving's `models.config`: `name: value`, `name { ... }`,
    `name < ... >`, `name: [a, b]`, `#` comments and optional `,` / `;` separators.
    """
    tokens = _tokenize(text)

    def scalar(token: tuple[str, Any]) -> Any:
        kind, value = token
        if kind == "word" and re.fullmatch(r"[+-]?\d+", value):
            return int(value)
        if kind == "sym":
            raise ValueError(f"models.config: unexpected {value!r}")
        return value

    def message(i: int, closing: str | None) -> tuple[dict[str, list[Any]], int]:
        fields: dict[str, list[Any]] = {}
        while True:
            if i >= len(tokens):
                if closing is None:
                    return fields, i
                raise ValueError(f"models.config: missing {closing!r}")
            kind, name = tokens[i]
            if kind == "sym" and name == closing:
                return fields, i + 1
            if kind != "word":
                raise ValueError(f"models.config: expected a field name, got {name!r}")
            i += 1
            if i < len(tokens) and tokens[i] == ("sym", ":"):
                i += 1
            if i >= len(tokens):
                raise ValueError(f"models.config: field {name!r} has no value")
            if tokens[i] in (("sym", "{"), ("sym", "<")):
                sub, i = message(i + 1, "}" if tokens[i][1] == "{" else ">")
                fields.setdefault(name, []).append(sub)
            elif tokens[i] == ("sym", "["):
                i += 1
                while tokens[i] != ("sym", "]"):
                    if tokens[i] != ("sym", ","):
                        fields.setdefault(name, []).append(scalar(tokens[i]))
                    i += 1
                i += 1
            else:
                fields.setdefault(name, []).append(scalar(tokens[i]))
                i += 1
            if i < len(tokens) and tokens[i] in (("sym", ","), ("sym", ";")):
                i += 1

    fields, _ = message(0, None)
    return fields


def parse_model_config(text: str) -> list[ModelConfig]:
    """Parses a TF Serving `ModelServerConfig` text proto into `ModelConfig`s.

    Raises:
        ValueError: when there is no `model_config_list`, a config lacks `name` or
            `base_path`, or two configs share a name.
    """
    root = parse_text_proto(text)
    if "model_config_list" not in root:
        raise ValueError("models.config: expected a `model_config_list { ... }` block")
    configs = []
    for entry in root["model_config_list"][0].get("config", []):
        if "name" not in entry or "base_path" not in entry:
            raise ValueError(f"models.config: every config needs name and base_path: {entry}")
        policy = VersionPolicy()
        for mvp in entry.get("model_version_policy", []):
            if "all" in mvp:
                policy = VersionPolicy("all")
            elif "specific" in mvp:
                versions = mvp["specific"][0].get("versions", [])
                policy = VersionPolicy("specific", versions=tuple(int(v) for v in versions))
            elif "latest" in mvp:
                policy = VersionPolicy("latest", int(mvp["latest"][0].get("num_versions", [1])[0]))
        labels = {str(e["key"][0]): int(e["value"][0]) for e in entry.get("version_labels", [])}
        configs.append(
            ModelConfig(str(entry["name"][0]), str(entry["base_path"][0]), policy, labels)
        )
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"models.config: duplicate model names in {names}")
    return configs


# --------------------------------------------------------------------------- servables


class Servable:
    """One loaded version of a SavedModel: its SignatureDefs and callable signatures.

    Args:
        name: str. Model name.
        version: int. Version number (the directory name).
        path: str. The version directory holding `saved_model.pb`.
    """

    def __init__(self, name: str, version: int, path: str) -> None:
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name = name
        self.version = version
        self.path = path
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags]
        if not graphs:
            raise ServingStatus("NOT_FOUND", f"No MetaGraphDef with tag 'serve' in {path}")
        self.signature_defs = dict(graphs[0].signature_def)
        self._module = tf.saved_model.load(path, tags=["serve"])
        self._functions = dict(self._module.signatures)

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a signature on numpy inputs; TF errors become `ServingStatus`."""
        import tensorflow as tf

        function = self._functions.get(signature_name)
        if function is None:
            raise ServingStatus(
                "FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.'
            )
        specs = self.signature_defs[signature_name].inputs
        try:
            outputs = function(
                **{
                    k: tf.constant(v, dtype=tf.dtypes.as_dtype(specs[k].dtype))
                    for k, v in inputs.items()
                }
            )
        except tf.errors.OpError as e:
            code = (
                STATUS_CODES[e.error_code] if 0 <= e.error_code < len(STATUS_CODES) else "UNKNOWN"
            )
            raise ServingStatus(code, _strip_eager_prefix(e.message)) from None
        except (TypeError, ValueError) as e:
            raise invalid_argument(str(e)) from None
        return {k: v.numpy() for k, v in outputs.items()}


def _strip_eager_prefix(message: str) -> str:
    """Drops what the eager runtime adds to a graph error (preamble, `[Op:...]` suffix)."""
    marker = "<stack traces unavailable>\n"
    if message.startswith("Graph execution error:") and marker in message:
        message = message.split(marker, 1)[1]
    return re.sub(r" \[Op:__inference_[^\]]*\]$", "", message)


@dataclasses.dataclass
class VersionState:
    """One row of `GetModelStatusResponse.model_version_status`."""

    state: str
    error_code: str = "OK"
    error_message: str = ""


class ModelRepository:
    """Loads the models named by `configs` and keeps them in step with the disk.

    Args:
        configs: sequence of ModelConfig. The models to serve.
        poll_wait_seconds: float. Seconds between polls of the base paths, as TF
            Serving's `--file_system_poll_wait_seconds`; 0 polls once. Defaults to 2.
        max_num_load_retries: int. Extra load attempts for a failing version (one
            per poll), as TF Serving's `--max_num_load_retries`. Defaults to 5.
    """

    def __init__(
        self,
        configs: Sequence[ModelConfig],
        poll_wait_seconds: float = 2.0,
        max_num_load_retries: int = 5,
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.poll_wait_seconds = poll_wait_seconds
        self.max_num_load_retries = max_num_load_retries
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._loaded: dict[str, dict[int, Servable]] = {c.name: {} for c in configs}
        self._states: dict[str, dict[int, VersionState]] = {c.name: {} for c in configs}
        self._failures: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> None:
        """Loads what is on disk now, then polls in a daemon thread."""
        self.poll_once()
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="model-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops polling (loaded versions stay usable until dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll_once()
            except Exception:  # never let a bad directory kill the poller
                logger.exception("Polling model base paths failed")

    def poll_once(self) -> None:
        """Scans every base path once, loading new aspired versions and unloading others."""
        with self._poll_lock:
            for config in self.configs.values():
                self._sync(config, _versions_on_disk(config.base_path))

    def _sync(self, config: ModelConfig, on_disk: dict[int, str]) -> None:
        aspired = config.policy.select(sorted(on_disk))
        loaded = self._loaded[config.name]
        for version in sorted(aspired - set(loaded)):
            if self._failures.get((config.name, version), 0) > self.max_num_load_retries:
                continue
            self._set_state(config.name, version, VersionState("LOADING"))
            try:
                servable = Servable(config.name, version, on_disk[version])
            except Exception as e:
                self._failures[(config.name, version)] = (
                    self._failures.get((config.name, version), 0) + 1
                )
                code = e.code if isinstance(e, ServingStatus) else "UNKNOWN"
                self._set_state(config.name, version, VersionState("END", code, str(e)))
                logger.error("Loading %s version %d failed: %s", config.name, version, e)
                continue
            self._failures.pop((config.name, version), None)
            with self._lock:
                self._loaded[config.name] = {**self._loaded[config.name], version: servable}
                self._states[config.name][version] = VersionState("AVAILABLE")
            logger.info("Loaded %s version %d from %s", config.name, version, on_disk[version])
        for version in sorted(set(self._loaded[config.name]) - aspired):
            self._set_state(config.name, version, VersionState("UNLOADING"))
            with self._lock:
                remaining = dict(self._loaded[config.name])
                remaining.pop(version)
                self._loaded[config.name] = remaining
                self._states[config.name][version] = VersionState("END")
            logger.info("Unloaded %s version %d", config.name, version)
        if not on_disk:
            logger.warning("No versions of servable %s found under base path %s",
                           config.name, config.base_path)  # fmt: skip

    def _set_state(self, name: str, version: int, state: VersionState) -> None:
        with self._lock:
            self._states[name][version] = state

    # -- lookups
    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """Returns the servable a request names, with TF Serving's errors.

        Raises:
            ServingStatus: `INVALID_ARGUMENT` for an unknown label, `NOT_FOUND` when
                the model or version is not loaded.
        """
        if label is not None:
            labels = self.configs[name].version_labels if name in self.configs else {}
            if label not in labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = labels[label]
        with self._lock:
            versions = self._loaded.get(name, {})
            if version is None and versions:
                return versions[max(versions)]
            if version is not None and version in versions:
                return versions[version]
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        raise ServingStatus("NOT_FOUND", f"Servable not found for request: {request}")

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionState]]:
        """Returns `(version, state)` pairs, highest version first, as GetModelStatus."""
        with self._lock:
            states = dict(self._states.get(name, {}))
        if version is not None:
            if version not in states:
                raise ServingStatus(
                    "NOT_FOUND", f"Could not find version {version} of model {name}"
                )
            return [(version, states[version])]
        if not states:
            raise ServingStatus("NOT_FOUND", f"Could not find any versions of model {name}")
        return sorted(states.items(), reverse=True)


_VERSION_DIR = re.compile(r"[0-9]{1,18}")


def _versions_on_disk(base_path: str) -> dict[int, str]:
    """Maps version number -> directory for `<base>/<digits>/saved_model.pb`."""
    try:
        entries = os.listdir(base_path)
    except OSError:
        return {}
    found = {}
    for entry in entries:
        path = os.path.join(base_path, entry)
        if _VERSION_DIR.fullmatch(entry) and os.path.isfile(os.path.join(path, "saved_model.pb")):
            found[int(entry)] = path
    return found
