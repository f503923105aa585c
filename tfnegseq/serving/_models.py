"""Model discovery and loading for the local TF-Serving-compatible server.

Mirrors the parts of TF Serving's `ServerCore` that the REST API exposes:
`ModelRepository` polls each model's base path for numeric version directories
(`<base>/<version>/saved_model.pb`), loads and unloads versions according to the
version policy (`tfnegseq.serving.model_config`), keeps TF Serving's per-version
states (`START`, `LOADING`, `AVAILABLE`, `UNLOADING`, `END`) and resolves a request's
name / version / label to a loaded `Servable` with TF Serving's error codes and
messages (`tensorflow_serving/model_servers/server_core.cc`,
`tensorflow_serving/core/manager.h`, `get_model_status_impl.cc`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from tfnegseq.serving.model_config import (  # noqa: F401 (re-exported)
    ModelConfig,
    VersionPolicy,
    load_model_config,
    parse_model_config,
)
from tfnegseq.serving.status import (  # noqa: F401 (re-exported)
    STATUS_CODES,
    ServingStatus,
    invalid_argument,
)

logger = logging.getLogger(__name__)


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
