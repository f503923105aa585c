"""The package installs as a wheel and its demo runs from it, away from the checkout."""

import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds and installs a wheel, then runs the demo: about 3 minutes
@pytest.mark.timeout(900)
def test_demo_runs_from_an_installed_wheel(tmp_path):
    """Build the wheel, install it (without dependencies) into a fresh venv that borrows
    this environment's third-party packages, and run `python -m tfnegseq.demo` from an
    empty directory: the demo must find its config inside the package."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(REPO)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("tfnegseq-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # third-party packages from this environment (a plain path: its .pth files, among them
    # the editable install of the checkout, are not read)
    pathlib.Path(purelib, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import tfnegseq; print(tfnegseq.__file__)"],
                           check=True, capture_output=True, text=True, cwd=work, env=env)
    assert where.stdout.strip().startswith(str(venv)), where.stdout
    small = ["simulate.num_users=40", "simulate.events_per_user_max=150",
             "samples.max_history=20", "model.sequence_length=20", "model.embedding_dim=16",
             "train.epochs=1", "train.shuffle_buffer=1000"]
    sine = ["samples.min_core=3", "model.max_length=20", "model.embedding_dim=16",
            "train.batch_size=8",
            "train.epochs=5", "train.validate_every=1"]
    args = [str(python), "-m", "tfnegseq.demo"]
    for s in small:
        args += ["--set", s]
    for s in sine:
        args += ["--sine-set", s]
    run = subprocess.run(args, capture_output=True, text=True, cwd=work, env=env, timeout=800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Mix Seq + TAPF" in run.stdout
    assert " 1. item " in run.stdout and "10. item " in run.stdout  # step 5's retrieval
    assert (work / "runs" / "demo").is_dir() and not (REPO / "elsewhere").exists()


def console_scripts() -> dict[str, str]:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_every_console_script_also_runs_as_a_module(script):
    """Each console script's module runs its `main` under `python -m` too (the
    ARCHITECTURE page promises both): the module ends in `if __name__ == "__main__":`
    calling the script's function. Read from the source, no import."""
    import ast

    module, function = console_scripts()[script].split(":")
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    guarded = [node for node in tree.body if isinstance(node, ast.If)
               and ast.unparse(node.test) in ("__name__ == '__main__'", "'__main__' == __name__")]
    assert guarded, f"{module} has no `if __name__ == '__main__':` block ({script})"
    calls = {n.func.id for g in guarded for n in ast.walk(g)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert function in calls, f"{module}'s __main__ block does not call {function}()"
