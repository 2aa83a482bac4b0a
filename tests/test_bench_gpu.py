"""scripts/bench_gpu.sh --dry-run: every step of the GPU benchmark runs on the CPU with the tiny model and
small counts, and reports what the real run reports (the JPEGs it built, images/s end to end with GPU
decoding on and off, the decode/encode split, GPU utilisation said to be unmeasured, FAISS exact search
at two sizes), in results.json and in the doc section it writes. The real run needs a CUDA GPU:
without one (and without --dry-run) the script says so and stops."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import require_imagenet

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_gpu.sh"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", str(REPO / ".venv" / "bin" / "python"))}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)


def test_the_dry_run_runs_every_step(tmp_path: Path) -> None:
    require_imagenet()
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Another section\n\nkept\n")
    done = _run("--dry-run", "--workdir", str(tmp_path / "work"), "--out", str(doc))
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert results["dry_run"] and results["device"] == "cpu"
    jpegs = sorted((tmp_path / "work" / "jpegs").glob("*.jpg"))
    assert results["jpegs"]["count"] == len(jpegs) == 32
    assert len({path.stat().st_size for path in jpegs}) > 20  # varied copies, not one file 32 times
    runs = results["index"]
    configurations = sorted((r["model"], r["batch"], r["gpu_decode"]) for r in runs)
    assert configurations == [("tiny", 16, False), ("tiny", 16, True)]
    for r in runs:
        assert (r["embedded"], r["failed"]) == (32, 0)
        assert r["images_per_s"] > 0 and r["decode_images_per_s"] > 0 and r["encode_images_per_s"] > 0
        assert r["gpu_util"] == "n/a"  # no NVIDIA GPU here: unmeasured, never a made-up 0
    faiss = results["faiss"]
    assert [r["vectors"] for r in faiss["runs"]] == [10_000, 20_000]
    assert all(r["batch_ms"] > 0 and r["single_p50_ms"] > 0 for r in faiss["runs"])
    assert not results["skipped"]

    text = doc.read_text()
    assert "## Another section\n\nkept" in text
    assert "## GPU benchmark (bench_gpu)" in text and "DRY RUN" in text
    assert "| tiny | 16 | on |" in text and "| 20,000 |" in text


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="this machine has a GPU")
def test_the_real_run_needs_a_gpu(tmp_path: Path) -> None:
    done = _run("--workdir", str(tmp_path), "--images", "1", timeout=120)
    assert done.returncode != 0
    assert "no CUDA GPU" in done.stderr and "--dry-run" in done.stderr
