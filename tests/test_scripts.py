"""Specification: every script under scripts/ answers `--help` with its usage (exit 0) and does
nothing else: no file named like a flag, nothing in CLIPSEARCH_HOME (make_tiny_checkpoint.py once
wrote a checkpoint named `--help`). A shell script that passes its arguments to a Python script
refuses an unknown flag as that script does (exit 2, before any work).

A script is a file run by hand: a .py file with a `__main__` block, or a .sh file other than
install.sh (sourced) and quickstart.sh (its arguments are a folder and a query; it installs first).
Unknown flags to the .py scripts: tests/test_script_flags.py. scripts/test.sh hands unknown flags
to pytest, which refuses them itself, after installing: only its --help is run here. Each runs from
an empty folder, with CLIPSEARCH_HOME in it, so anything it writes shows up there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
PASSED_ON = {"test.sh"}  # its other arguments are pytest's: pytest refuses an unknown one
NOT_RUN = {"install.sh", "quickstart.sh"}
Answer = tuple[subprocess.CompletedProcess, Path]  # the run, and the folder it ran in


def scripts() -> list[Path]:
    python = [p for p in sorted(SCRIPTS.glob("*.py")) if 'if __name__ == "__main__":' in p.read_text()]
    shell = [p for p in sorted(SCRIPTS.glob("*.sh")) if p.name not in NOT_RUN]
    return python + shell


def passing_on() -> list[Path]:
    """The shell scripts that hand their arguments to a Python script's parser."""
    return [p for p in scripts() if p.suffix == ".sh" and p.name not in PASSED_ON]


def command(script: Path, *args: str) -> list[str]:
    return [sys.executable if script.suffix == ".py" else "bash", str(script), *args]


def flag_named(folder: Path) -> list[Path]:
    return list(folder.rglob("-*"))


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Answer]:
    """Each script run with --help, and those passing on with --nosuch (a few at a time: each starts a
    Python)."""
    runs = [(script, "--help") for script in scripts()]
    runs += [(script, "--nosuch") for script in passing_on()]

    def run(script: Path, flag: str) -> Answer:
        where = tmp_path_factory.mktemp(f"{script.stem}{flag}")
        env = {**os.environ, "CLIPSEARCH_HOME": str(where / "home"), "PYTHONPATH": str(REPO),
               "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command(script, flag), cwd=where, env=env, capture_output=True, text=True,
                              timeout=300)
        return done, where

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda pair: run(*pair), runs))
    return {(script.name, flag): result for (script, flag), result in zip(runs, results, strict=True)}


def test_the_scripts_are_found() -> None:
    names = {p.name for p in scripts()}
    assert {"make_tiny_checkpoint.py", "fetch_weights.py", "settings_table.py", "bench_query.py",
            "test.sh", "bench_gpu.sh"} <= names
    assert not {"benchlib.py", "install.sh", "quickstart.sh"} & names


@pytest.mark.parametrize("script", [p.name for p in scripts()])
def test_help_helps_and_writes_nothing(script: str, answers) -> None:
    done, where = answers[(script, "--help")]
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower(), done.stdout
    assert not flag_named(where) and not flag_named(REPO / "scripts") and not (REPO / "--help").exists()
    assert not (where / "home").exists(), "--help wrote into CLIPSEARCH_HOME"


@pytest.mark.parametrize("script", [p.name for p in passing_on()])
def test_a_shell_script_refuses_an_unknown_flag_before_any_work(script: str, answers) -> None:
    done, where = answers[(script, "--nosuch")]
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "unrecognized arguments: --nosuch" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not flag_named(where) and not (REPO / "--nosuch").exists()
    assert not (where / "home").exists(), "an unknown flag got as far as CLIPSEARCH_HOME"
