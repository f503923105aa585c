"""Shared by the benchmarks: the machine they ran on (CPU model and flags from lscpu,
cores, memory) and how results are written."""

from __future__ import annotations

import json
import os
import platform
import subprocess


def machine() -> dict[str, object]:
    info: dict[str, object] = {"cores": os.cpu_count(), "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            elif key.strip() == "Flags":
                flags = value.split()
                info["simd_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
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
