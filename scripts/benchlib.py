"""What the bench scripts (bench_index, bench_query, bench_load) share.

- the machine a run measured (`machine`, `machine_line`) and its load (`loadavg`);
- percentiles of latencies (`percentiles`);
- their sections of docs/benchmarks.md, replaced in place (`write_section`, `write_subsection`);
- random-weight checkpoints of the tiny test architecture or ViT-B-32 (`random_checkpoint`);
- timing in alternating rounds, in process (`alternate`) or whole commands (`time_commands`), and
  ratios taken within each round (`round_ratios`): the machine is shared, so only numbers measured
  side by side compare;
- a server subprocess: a free port, waiting for /healthz, stopping it (`free_port`, `wait_healthy`,
  `stop`), reading a Prometheus counter (`metric`).

Imported as `scripts.benchlib` (the scripts put the repository on sys.path), never from indexer:
the scripts sit above every layer. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
TINY_CONFIG = REPO / "tests" / "tiny-clip.json"
IMAGES = (REPO.parent / "shared" / "data" / "imagenet-samples").resolve()
T = TypeVar("T")


def logger(script: str) -> Callable[[str], None]:
    """A `log(message)` printing timestamped progress lines to stderr (stdout may carry results)."""

    def log(message: str) -> None:
        print(f"[{script} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return log


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """How the run was started, as the doc shows it."""
    return " ".join([".venv/bin/python", f"scripts/{script}", *(sys.argv[1:] if argv is None else argv)])


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment for a child: offline, the repository importable, plus `extra`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **extra}


def cli(*args: str) -> list[str]:
    """The `clipsearch` command as this interpreter runs it (the click CLI once it exists)."""
    module = "clipsearch" if (REPO / "clipsearch" / "__main__.py").exists() else "indexer.cli"
    return [sys.executable, "-m", module, *args]


# --- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model and flags, cores (all, and usable by this process), RAM, GPU, Python and library versions."""
    cpuinfo = ""
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
    ram = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        ram = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    from indexer.limits import usable_cpus  # affinity and cgroup quota: what the run had, not the box

    versions = {}
    for package in ("torch", "open_clip_torch", "pillow", "qdrant-edge-py", "faiss-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "cores": os.cpu_count() or 1,
        "nproc": usable_cpus(),
        "cpu": model.group(1).strip() if model else (platform.processor() or "unknown"),
        "flags": [f for f in wanted if flags and f in flags.group(1).split()],
        "ram_gib": round(ram / 2**30, 1),
        "gpu": gpus(),
        "python": platform.python_version(),
        "versions": versions,
    }


def gpus() -> list[str]:
    """NVIDIA GPUs by name ([] without a driver); asked of nvidia-smi so that torch need not load."""
    if not shutil.which("nvidia-smi"):
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return []


def loadavg() -> list[float]:
    """1, 5 and 15-minute load averages: how busy the (shared) machine was."""
    return list(os.getloadavg())


def machine_line(m: Mapping[str, Any], load_before: Sequence[float], load_after: Sequence[float]) -> str:
    """One sentence for a doc section: the machine, and its load before and after the run."""
    versions = ", ".join(f"{name} {version}" for name, version in m.get("versions", {}).items())
    cores = f"{m['nproc']} CPUs" + (f" of {m['cores']}" if m.get("cores", m["nproc"]) != m["nproc"] else "")
    gpu = m.get("gpu") or []
    gpu = [gpu] if isinstance(gpu, str) else gpu  # results.json of older runs: one name or None
    ram = f"{m['ram_gib']} GiB RAM, " if "ram_gib" in m else ""
    return (
        f"Machine: {cores} ({m['cpu']}; {', '.join(m.get('flags', [])) or 'no AVX-512'}), "
        f"{ram}GPU: {', '.join(gpu) or 'none'}; Python {m['python']}"
        + (f", {versions}" if versions else "") + ". Load average (1/5/15 min) "
        f"{_load(load_before)} before, {_load(load_after)} after: the machine is shared with other "
        "developers' jobs, so compare numbers within one run."
    )


def _load(values: Sequence[float]) -> str:
    return "/".join(f"{x:.1f}" for x in values)


# --- statistics ---------------------------------------------------------------------------------


def percentiles(
    values: Sequence[float], qs: Iterable[int] = (50, 95, 99), prefix: str = "p"
) -> dict[str, float]:
    """{"p50": ..., "p95": ..., ...} of `values` (NaN when there are none); keys are prefix + q."""
    return {f"{prefix}{q}": float(np.percentile(values, q)) if len(values) else float("nan") for q in qs}


def round_ratios(values: Mapping[str, Sequence[float]], reference: str) -> dict[str, float]:
    """Per name, the median over rounds of value / reference's value in the same round."""
    return {
        name: float(np.median([a / b for a, b in zip(series, values[reference], strict=True)]))
        for name, series in values.items()
    }


def alternate(runs: Mapping[str, Callable[[int], T]], rounds: int) -> dict[str, list[T]]:
    """Run each of `runs` once per round (called with the round number), in the given order in even
    rounds and reversed in odd ones, so that a drift in the machine's load hits all of them alike."""
    done: dict[str, list[T]] = {name: [] for name in runs}
    for round_ in range(rounds):
        for name in list(runs) if round_ % 2 == 0 else list(reversed(list(runs))):
            done[name].append(runs[name](round_))
    return done


@dataclass
class Timed:
    """One run of a command: its wall-clock seconds and what it said."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str


def time_commands(
    commands: Mapping[str, Callable[[int], Sequence[str]]],
    rounds: int,
    env: Mapping[str, str] | None = None,
    timeout: float = 3600,
) -> dict[str, list[Timed]]:
    """Whole commands (load and start-up included) in alternating rounds; each entry gives the
    argv for a round (so it can name a fresh output folder). A failed run raises, with its stderr."""

    def run(name: str) -> Callable[[int], Timed]:
        def once(round_: int) -> Timed:
            argv = [str(a) for a in commands[name](round_)]
            started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                                  env=dict(env) if env is not None else subprocess_env())
            timed = Timed(time.perf_counter() - started, done.returncode, done.stdout, done.stderr)
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-15:])
                raise RuntimeError(f"{name} failed (exit {done.returncode}): {' '.join(argv)}\n{tail}")
            return timed

        return once

    return alternate({name: run(name) for name in commands}, rounds)


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# --- checkpoints -------------------------------------------------------------------------------


def random_checkpoint(model: str, path: Path) -> tuple[str, Path]:
    """(CLIPSEARCH_MODEL, checkpoint) for `model` ("tiny": tests/tiny-clip.json, or an open_clip
    architecture such as ViT-B-32) with fixed random weights (seed 0) saved at `path`, made once.
    Speed does not depend on the weights, and nothing is downloaded."""
    name = str(TINY_CONFIG) if model == "tiny" else model
    if not path.exists():
        import open_clip
        import torch

        architecture = model
        if model == "tiny":
            open_clip.add_model_config(TINY_CONFIG)
            architecture = TINY_CONFIG.stem
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")  # a killed run leaves no half-written checkpoint
        torch.save(open_clip.create_model(architecture, pretrained=None).state_dict(), partial)
        os.replace(partial, path)
    return name, path


# --- docs/benchmarks.md ------------------------------------------------------------------------


def _section_span(text: str, heading: str) -> tuple[int, int] | None:
    """Where the section under `heading` (a "## " line) starts and ends in `text`, or None."""
    start = text.find(heading)
    if start < 0:
        return None
    following = re.search(r"^## ", text[start + len(heading):], re.MULTILINE)
    return start, (start + len(heading) + following.start() if following else len(text))


def read_section(doc: Path, heading: str) -> str:
    """The section's text after its heading ("" when absent)."""
    text = doc.read_text() if doc.exists() else ""
    span = _section_span(text, heading)
    return text[span[0] + len(heading):span[1]] if span else ""


def write_section(doc: Path, heading: str, section: str) -> None:
    """Replace the section starting with `heading` (or append it), leaving the rest of the doc alone;
    re-read right before writing, as other scripts write other sections of the same file."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    span = _section_span(text, heading)
    if span is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        rest = text[span[1]:]
        text = text[:span[0]] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    doc.write_text(text.rstrip("\n") + "\n")


def write_subsection(doc: Path, heading: str, intro: str, subheading: str, body: str) -> None:
    """Replace, in the section under `heading`, the "### " subsection whose title starts with
    `subheading` (or add it), keeping the others; the section's intro is rewritten as `intro`."""
    subsections: dict[str, str] = {}
    for chunk in re.split(r"^(?=### )", read_section(doc, heading), flags=re.MULTILINE)[1:]:
        subsections[chunk.split("\n", 1)[0]] = chunk.strip("\n")
    key = next((k for k in subsections if k.startswith(subheading)), subheading)
    subsections[key] = body.strip("\n")
    write_section(doc, heading, "\n\n".join([heading, intro.strip("\n"), *subsections.values()]) + "\n")


# --- a server in a subprocess ---------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen


@contextlib.contextmanager
def serving(argv: Callable[[int], Sequence[str]], env: Mapping[str, str] | None = None,
            log_path: Path | None = None) -> Iterator[Server]:
    """An API server subprocess (`argv(port)` on a free loopback port), healthy, then stopped."""
    port = free_port()
    with open(log_path, "w") if log_path else contextlib.nullcontext() as log:
        process = subprocess.Popen([str(a) for a in argv(port)], cwd=REPO, env=dict(env or subprocess_env()),
                                   stdout=log, stderr=subprocess.STDOUT if log else None)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log_path)
        yield Server(url, process)
    finally:
        stop(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(
    url: str, server: subprocess.Popen, log_path: Path | None = None, timeout: float = 300
) -> None:
    """Until GET /healthz answers 200; an exited server raises with the end of its log."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log_path.read_text()[-3000:] if log_path and log_path.exists() else "(no log)"
            raise RuntimeError(f"the API server exited ({server.returncode}); its log:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the API server did not answer /healthz in {timeout:g} s")


def stop(server: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops it (a clean shutdown), then kill after a minute."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def metric(text: str, name: str) -> float | None:
    """A Prometheus sample's value from /metrics text (the first one, whatever its labels)."""
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


# --- a run's start and end, shared by the scripts ----------------------------------------------------


def add_workdir_options(parser: Any, name: str) -> None:
    """--workdir and --checkpoint, as every script that builds collections takes them."""
    parser.add_argument("--workdir", type=Path, default=None,
                        help=f"data, collections and the checkpoint (default: CLIPSEARCH_HOME/{name})")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="ViT-B-32 checkpoint (default: WORKDIR/vit-b-32-random.pt, made if missing)")


def workdir_and_checkpoint(workdir: Path | None, name: str, checkpoint: Path | None) -> tuple[Path, Path]:
    """The run's folder (default: CLIPSEARCH_HOME/<name>, made) and a ViT-B-32 checkpoint with fixed
    random weights there unless one is given: the same compute as trained ones, no model hub needed."""
    if workdir is None:
        from indexer.settings import Settings

        workdir = Settings().home / name
    workdir.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        checkpoint = random_checkpoint("ViT-B-32", workdir / "vit-b-32-random.pt")[1]
    return workdir, checkpoint


def earlier_results(workdir: Path) -> tuple[Path, dict]:
    """WORKDIR/results.json and what an earlier run left in it ({} when none)."""
    results_file = workdir / "results.json"
    return results_file, json.loads(results_file.read_text()) if results_file.exists() else {}


def publish(run: dict, results: Path, doc: Path, heading: str, section: str, print_only: bool) -> None:
    """Keep the raw results, then write the rendered section into the doc (or print it)."""
    results.write_text(json.dumps(run, indent=2, default=float))
    show_section(doc, heading, section, print_only)
    if not print_only:
        print(f"wrote {doc}; raw results in {results}", file=sys.stderr)


def show_section(doc: Path, heading: str, section: str, print_only: bool) -> None:
    """Write the rendered section into the doc, or only print it."""
    if print_only:
        print(section)
    else:
        write_section(doc, heading, section)

