"""Shared by the benchmarks: the machine they ran on (CPU model and flags from lscpu,
cores, memory) and how results are written."""

from __future__ import annotations

import json
import os
import platform
import subprocess

# lscpu fields recorded besides the model name and the flags.
_LSCPU_KEYS = ("CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "L2 cache",
               "L3 cache", "Hypervisor vendor")


def machine() -> dict[str, object]:
    """CPU model, every lscpu flag (and the SIMD ones apart), topology, caches, cores."""
    info: dict[str, object] = {"cores": os.cpu_count(), "python": platform.python_version()}
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "Model name":
                info["cpu"] = value
            elif key == "Flags":
                flags = value.split()
                info["flags"] = flags
                info["simd_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
            elif key in _LSCPU_KEYS:
                info[key.lower().replace("(s)", "s").replace(" ", "_")] = value
    except (OSError, subprocess.CalledProcessError):
        info["cpu"] = platform.processor() or platform.machine()
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def write_result(result: dict[str, object], path: str) -> None:
    """Writes `result` as indented JSON to `path` (creating its folder) and prints it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
