"""The commands of README.md and serving/README.md, run as written.

A fenced block preceded by an HTML comment is part of the docs' runnable walk-through:

- `<!-- test: run -->`: the block runs to completion (`bash` blocks with `bash -e`,
  `python` blocks with `.venv/bin/python`); it must exit 0 and print no `"error"`
  (curl exits 0 on a 4xx, so a TF Serving error reply is caught by its text);
- `<!-- test: serve -->`: the block starts a server (one command, it does not return);
  it runs in the background until the port answers `GET /v1/models/NAME` with 200
  (`NAME` from its `--model_name`), and is stopped (SIGTERM) when the next serve block
  starts or the test ends, as a user would stop it with Ctrl-C.

Blocks run in document order, README.md first, in one fresh working directory that holds
only `.venv` (a link to this interpreter's environment) and `configs/synthetic.yaml`: the
shipped config with a smaller simulated log and a shorter training (`SMALL`), so the
walk-through simulate -> build -> train -> export -> serve -> query takes a few minutes
instead of ten. The one other change to the text is the port: 8501 becomes a free port.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = ("README.md", "serving/README.md")
MARK = re.compile(r"<!-- test: (run|serve) -->[ \t]*\n```(\w+)\n(.*?)\n```", re.S)
# Overrides of configs/synthetic.yaml for the walk-through: sizes only; the features,
# rules, split and output paths stay as shipped, so the documented requests fit.
SMALL = {
    "simulate": {
        "num_users": 40,
        "num_items": 300,
        "events_per_user_min": 20,
        "events_per_user_max": 150,
    },
    "samples": {"max_history": 20},
    "model": {"embedding_dim": 8, "sequence_length": 20},
    "train": {
        "epochs": 1,
        "steps_per_epoch": 4,
        "batch_size": 128,
        "jit_compile": False,
        "shuffle_buffer": 1000,
    },
}
BLOCK_TIMEOUT_S = 240
STEPS = (
    "tfnegseq.data.simulate",
    "beam_jobs.build_samples",
    "tfnegseq.train",
    "tfnegseq.export",
    "tfnegseq.serving.server",
    ":predict",
    "ServingClient",
)


@dataclasses.dataclass
class Block:
    doc: str
    line: int
    mode: str  # run | serve
    lang: str  # bash | python
    text: str


def blocks() -> list[Block]:
    """The marked blocks of every doc in `DOCS`, in order."""
    out = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for m in MARK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(Block(doc, line, m.group(1), m.group(2), m.group(3)))
    return out


def test_marked_blocks_are_found_and_runnable():
    found = blocks()
    assert {b.doc for b in found} == set(DOCS), "every doc has runnable blocks"
    assert all(b.lang in ("bash", "python") for b in found), [(b.doc, b.line) for b in found]
    for b in found:
        if b.mode == "serve":
            assert b.lang == "bash" and re.search(r"--model_name \S+", b.text), (b.doc, b.line)
            assert "--port 8501" in b.text, (b.doc, b.line)  # the port the test replaces
    # The walk-through covers every step, so unmarking a block cannot hollow it out.
    walk = "\n".join(b.text for b in found)
    for step in STEPS:
        assert step in walk, f"no marked block runs {step}"
    # Every marker is directly followed by a fence (a marker the regex misses is a typo).
    for doc in DOCS:
        text = (REPO / doc).read_text()
        assert text.count("<!-- test:") == len(MARK.findall(text)), doc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small_config(workdir: pathlib.Path) -> None:
    cfg = yaml.safe_load((REPO / "configs" / "synthetic.yaml").read_text())
    for section, values in SMALL.items():
        cfg[section].update(values)
    (workdir / "configs").mkdir()
    (workdir / "configs" / "synthetic.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


class Servers:
    """The background server of the last serve block."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, block: Block, script: str, port: int, cwd, env) -> None:
        self.stop()
        name = re.search(r"--model_name (\S+)", script).group(1)
        log = open(cwd / f"server-{block.line}.log", "w")  # noqa: SIM115 (closed with the file)
        self.proc = subprocess.Popen(
            ["bash", "-e", "-c", script],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/v1/models/{name}"
        deadline = time.monotonic() + BLOCK_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{where(block)}: server exited\n{read_log(log.name)}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        pytest.fail(f"{where(block)}: {url} not up in {BLOCK_TIMEOUT_S}s\n{read_log(log.name)}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the block's own process group
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def where(block: Block) -> str:
    return f"{block.doc}:{block.line} ({block.mode} {block.lang})"


def read_log(path: str) -> str:
    return pathlib.Path(path).read_text()[-4000:]


@pytest.mark.slow  # runs the README's commands on tiny data: about 2 minutes
def test_documented_commands_run_end_to_end(tmp_path):
    """simulate -> build -> train -> export -> serve -> query, exactly as documented."""
    found = blocks()
    assert found
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    _small_config(workdir)
    port = _free_port()
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
    }
    servers = Servers()
    timings = []
    try:
        for block in found:
            script = block.text.replace("8501", str(port))
            t0 = time.monotonic()
            if block.mode == "serve":
                servers.start(block, script, port, workdir, env)
            else:
                cmd = (
                    ["bash", "-e", "-o", "pipefail", "-c", script]
                    if block.lang == "bash"
                    else [str(workdir / ".venv" / "bin" / "python"), "-c", script]
                )
                try:
                    done = subprocess.run(
                        cmd,
                        cwd=workdir,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=BLOCK_TIMEOUT_S,
                    )
                except subprocess.TimeoutExpired as e:
                    pytest.fail(f"{where(block)}: no exit in {BLOCK_TIMEOUT_S}s\n{e.stdout}")
                output = done.stdout + done.stderr
                assert done.returncode == 0, (
                    f"{where(block)} exit {done.returncode}\n{output[-6000:]}"
                )
                assert '"error"' not in done.stdout, f"{where(block)}: error reply\n{done.stdout}"
                timings.append(
                    (where(block), round(time.monotonic() - t0, 1), done.stdout.strip()[-300:])
                )
                continue
            timings.append((where(block), round(time.monotonic() - t0, 1), ""))
    finally:
        servers.stop()
        print("\n".join(f"{t:7.1f}s  {w}  {out}" for w, t, out in timings))
