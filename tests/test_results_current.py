"""The committed result files stay current under today's code.

Every experiment CLI fingerprints the config each recorded run would train with now
(`records.fingerprint`) and moves records of another config to `discarded_records`:
they are never reported or resumed again. A change that alters what a shipped setting
trains with (a new config key whose default enters the hash, a changed default) would
silently retire every committed record at the next sweep. This test replays each
committed file's report (`--report-only`, the file's own config and overrides, on a
copy) and checks that no record is set aside. When it fails, either the change must
leave the fingerprint alone (`records.LATER_KEYS` for a new key at its default) or the
records really are stale and must be rerun.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
CLIS = {"table2_": "table2", "polarity_": "polarity", "cain_": "cain", "sine_": "sine"}


def _files():
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        prefix = next((p for p in CLIS if path.name.startswith(p)), None)
        if prefix is None:
            continue
        data = json.loads(path.read_text())
        if any(r.get("config_sha") for r in data["records"]):
            out.append(pytest.param(path, CLIS[prefix], id=path.stem))
    return out


@pytest.mark.parametrize("path, cli", _files())
def test_committed_records_are_still_current(path, cli, tmp_path, capsys):
    import importlib

    data = json.loads(path.read_text())
    shutil.copy(path, tmp_path / path.name)
    argv = ["--config", str(REPO / data["config"]), "--results-dir", str(tmp_path),
            "--report-only"]
    for override in data.get("overrides") or []:
        argv += ["--set", override]
    module = importlib.import_module(f"tfnegseq.experiments.{cli}")
    assert module.main(argv) == 0
    after = json.loads((tmp_path / path.name).read_text())
    moved = [(r.get("study"), r.get("backbone"), r["setting"], r["seed"])
             for r in after.get("discarded_records", []) if r not in
             data.get("discarded_records", [])]
    assert not moved, f"{path.name}: {len(moved)} record(s) no longer current, e.g. {moved[:3]}"
    assert len(after["records"]) == len(data["records"])
