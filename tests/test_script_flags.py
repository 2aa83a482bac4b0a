"""Every script under scripts/ refuses an unknown flag (argparse's usage error, exit 2) and does nothing
else: no file named after the flag, nothing written where it ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
RUNNABLE = sorted(p.name for p in SCRIPTS.glob("*.py") if '__name__ == "__main__"' in p.read_text())


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={"CLIPSEARCH_HOME": str(cwd / "home"), "PATH": ""})


@pytest.mark.parametrize("name", RUNNABLE)
def test_a_script_refuses_an_unknown_flag(name: str, tmp_path: Path) -> None:
    done = run_script(name, "--no-such-flag", cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "unrecognized arguments: --no-such-flag" in done.stderr
    assert not list(tmp_path.iterdir())


def test_make_tiny_checkpoint_help_is_help_not_a_file_name(tmp_path: Path) -> None:
    done = run_script("make_tiny_checkpoint.py", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "usage:" in done.stdout
    assert not list(tmp_path.iterdir())
    saved = run_script("make_tiny_checkpoint.py", str(tmp_path / "tiny.pt"), cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert (tmp_path / "tiny.pt").stat().st_size > 0
