"""bench_load: the HTTP API under concurrent load, on loopback.

Indexes real photos (the first --photos of ../shared/data/imagenet-samples) with `clipsearch index`,
starts the real API with `clipsearch serve` as a subprocess (so the load generator does not share the
server's interpreter), and drives it with --clients concurrent clients (asyncio + httpx, one
keep-alive connection each) for --seconds seconds. Each client loops over a seeded random mix of
- text search, POST /v1/search: half distinct texts (each runs the text encoder), half drawn from a
  small fixed set (answered from the text-embedding cache); --batching compare reports the two kinds'
  latencies apart too;
- image search, POST /v1/search/image: an indexed photo uploaded as multipart;
- classify, POST /v1/classify: an indexed photo and 3 to 6 labels.
Every answer is checked, not only its status: k results best first for text; the uploaded photo among
the top-scored hits for image search; exactly the labels sent, best first, summing to 1 for classify.
An error is any non-2xx answer, any exception (timeouts included, at --timeout seconds) or any wrong
answer. It prints throughput and p50/p95/p99 per operation and overall, and writes the section
"## Load test (bench_load)" of docs/benchmarks.md (replacing only that model's part of it).

    .venv/bin/python scripts/bench_load.py --clients 50 --seconds 60
    .venv/bin/python scripts/bench_load.py --clients 50 --seconds 60 --model ViT-B-32

--model tiny (default) is the test suite's tiny architecture (tests/tiny-clip.json); ViT-B-32 (or any
open_clip architecture name) gets fixed random weights: the same compute as trained weights, offline.
`run_load` is also what tests/test_load_smoke.py runs against its in-test server.

Batching of query encoding (settings query_batch, query_batch_wait_ms) compared within one run:

    .venv/bin/python scripts/bench_load.py --model ViT-B-32 --clients 50 --seconds 30 \
        --mix text mixed --batching compare --rounds 2

--mix: `text` (text searches only), `image` (image searches only), `mixed` (the mix above); several
run one after another against each server. --batching compare restarts the server for each round,
alternately with batching on (the default settings) and off (CLIPSEARCH_QUERY_BATCH=1), in the order
on, off, off, on, on, ... so that neither side always runs first; the ratio on/off is taken per pair
of rounds, and its median reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from scripts import benchlib as bench  # noqa: E402

SECTION = "## Load test (bench_load)"
OPERATIONS = ("text", "image", "classify")
OPERATION_NAMES = {"text": "text search", "image": "image search", "classify": "classify"}
DEFAULT_MIX = {"text": 0.5, "image": 0.25, "classify": 0.25}
MIXES = {"mixed": DEFAULT_MIX, "text": {"text": 1.0}, "image": {"image": 1.0}}
BATCHING_OFF = {"CLIPSEARCH_QUERY_BATCH": "1"}  # on: the settings' defaults
REPEATED_TEXTS = tuple(f"a photo of {thing}" for thing in (
    "a dog", "a cat", "a red car", "a fish in the sea", "a mountain", "a bird on a branch", "a beach",
    "a city at night", "a bowl of fruit", "a snake", "a boat", "a person on a bicycle", "a forest",
    "a shark", "a frog", "an insect on a leaf", "a bridge", "a guitar", "a clock", "a pizza",
))
WORDS = ("red", "small", "old", "wet", "striped", "bright", "dark", "tiny", "huge", "blurry", "wooden")
THINGS = ("dog", "cat", "car", "fish", "tree", "house", "boat", "bird", "lamp", "shoe", "cup", "train")
LABELS = ("cat", "dog", "car", "fish", "bird", "snake", "boat", "tree", "flower", "insect", "food", "house")


# --- the load driver (also run by tests/test_load_smoke.py) -------------------------------------------


@dataclass
class Workload:
    """What the clients send: indexed photos (absolute path as indexed, bytes) and the collection size."""

    photos: Sequence[tuple[str, bytes]]
    count: int  # images in the collection: a text search answers min(k, count) results
    k: int = 10
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    headers: dict[str, str] = field(default_factory=dict)  # e.g. the API key


@dataclass
class Sample:
    operation: str
    started: float  # seconds since the run started
    ms: float
    error: str | None  # None when the answer was right
    kind: str = ""  # text: "encoded" (a distinct text) or "cached" (one of REPEATED_TEXTS)


@dataclass
class LoadResult:
    clients: int
    seconds: float  # the run's length: requests start until then
    elapsed: float  # until the last request finished
    samples: list[Sample]

    @property
    def errors(self) -> Counter:
        return Counter(s.error for s in self.samples if s.error is not None)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per operation and "all": requests, errors, req/s (answered right), p50/p95/p99/max ms."""
        out = {}
        for name in (*OPERATIONS, "all"):
            chosen = [s for s in self.samples if name == "all" or s.operation == name]
            ok = [s.ms for s in chosen if s.error is None]
            row = {"requests": len(chosen), "errors": len(chosen) - len(ok),
                   "rps": len(ok) / self.elapsed if self.elapsed else 0.0, **bench.percentiles(ok)}
            row["max"] = max(ok) if ok else float("nan")
            out[name] = row
        return out


def _pick(mix: dict[str, float], rng: random.Random) -> str:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


async def _one(client: httpx.AsyncClient, operation: str, work: Workload, rng: random.Random,
               serial: str, kind: str) -> str | None:
    """Send one request of `operation` (`kind`: of text, see Sample); None if it was answered right,
    else what went wrong."""
    if operation == "text":
        text = (f"a {rng.choice(WORDS)} {rng.choice(THINGS)}, query {serial}" if kind == "encoded"
                else rng.choice(REPEATED_TEXTS))
        response = await client.post("/v1/search", json={"text": text, "k": work.k})
        if response.status_code != 200:
            return _http_error(response)
        scores = [r["score"] for r in response.json()["results"]]
        if len(scores) != min(work.k, work.count) or scores != sorted(scores, reverse=True):
            return "wrong answer: text search results"
        return None
    uri, data = rng.choice(work.photos)
    name = os.path.basename(uri)
    if operation == "image":
        form = {"k": str(work.k)}
        response = await client.post("/v1/search/image", files={"file": (name, data)}, data=form)
        if response.status_code != 200:
            return _http_error(response)
        results = response.json()["results"]
        top = results[0]["score"] if results else 0.0
        # The photo itself scores ~1; another photo can tie with it only by being the same image.
        if top < 0.99 or uri not in {r["uri"] for r in results if r["score"] >= top - 1e-4}:
            return "wrong answer: the uploaded photo is not the best hit"
        return None
    labels = rng.sample(LABELS, rng.randint(3, 6))
    form = {"labels": ",".join(labels)}
    response = await client.post("/v1/classify", files={"file": (name, data)}, data=form)
    if response.status_code != 200:
        return _http_error(response)
    scored = response.json()["labels"]
    scores = [item["score"] for item in scored]
    if (sorted(item["label"] for item in scored) != sorted(labels) or scores != sorted(scores, reverse=True)
            or abs(sum(scores) - 1.0) > 1e-3):
        return "wrong answer: classify labels"
    return None


def _http_error(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.json()['detail']}"
    return f"HTTP {response.status_code}"


async def _client(index: int, client: httpx.AsyncClient, work: Workload, start: float, deadline: float,
                  timeout: float, budget: list[int], seed: int, samples: list[Sample]) -> None:
    rng = random.Random(seed * 1_000_003 + index)
    sent = 0
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        sent += 1
        operation = _pick(work.mix, rng)
        kind = ("encoded" if rng.random() < 0.5 else "cached") if operation == "text" else ""
        began = time.perf_counter()
        try:
            error = await _one(client, operation, work, rng, f"{index}-{sent}", kind)
        except httpx.TimeoutException as exc:
            error = f"timeout after {timeout:g} s ({type(exc).__name__})"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except (ValueError, KeyError, TypeError, IndexError) as exc:  # a body not in the promised shape
            error = f"bad answer: {type(exc).__name__}: {exc}"
        samples.append(Sample(operation, began - start, 1000 * (time.perf_counter() - began), error, kind))


async def run_load(base_url: str, work: Workload, clients: int, seconds: float, timeout: float = 60.0,
                   max_requests: int = 1_000_000, seed: int = 0) -> LoadResult:
    """`clients` concurrent clients, each sending one request at a time for `seconds` seconds (at most
    `max_requests` in all); requests started in time are waited for, each up to `timeout` seconds."""
    samples: list[Sample] = []
    budget = [max_requests]
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)  # one connection per client
    # Made before the clock starts: making one takes tens of ms (its TLS context), and would block the loop.
    pool = [httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits, headers=work.headers)
            for _ in range(clients)]
    try:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(_client(i, client, work, start, deadline, timeout, budget, seed, samples)
                               for i, client in enumerate(pool)))
        elapsed = time.perf_counter() - start
    finally:
        for client in pool:
            await client.aclose()
    return LoadResult(clients, seconds, elapsed, samples)


# --- the benchmark: index, serve, load, report ----------------------------------------------------------


log = bench.logger("bench_load")


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), 0 if unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_before = bench.loadavg()  # what else runs on the machine
    photo_dir = workdir / "photos"
    photo_dir.mkdir()
    sources = sorted(args.data.glob("*.JPEG"))[: args.photos]
    if len(sources) < args.photos:
        raise SystemExit(f"need {args.photos} photos in {args.data}, found {len(sources)}")
    photos = [Path(shutil.copy2(src, photo_dir / src.name)) for src in sources]

    log(f"model {args.model}: saving fixed random weights")
    model, pretrained = bench.random_checkpoint(args.model, workdir / "weights.pt")
    env = bench.subprocess_env(CLIPSEARCH_HOME=str(workdir / "home"), CLIPSEARCH_MODEL=model,
                         CLIPSEARCH_PRETRAINED=str(pretrained), CLIPSEARCH_DEVICE="cpu")
    env.pop("CLIPSEARCH_API_KEY", None)
    if args.api_key:
        env["CLIPSEARCH_API_KEY"] = args.api_key

    log(f"indexing {len(photos)} photos")
    started = time.perf_counter()
    done = subprocess.run(bench.cli("index", str(photo_dir), "--json"), cwd=bench.REPO, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"clipsearch index failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    if report["embedded"] != len(photos) or report["failed"]:
        raise SystemExit(f"clipsearch index did not embed every photo: {report}")
    index_s = time.perf_counter() - started

    work = Workload([(str(p), p.read_bytes()) for p in photos], len(photos), k=args.k,
                    headers={"X-API-Key": args.api_key} if args.api_key else {})
    rounds: list[dict[str, Any]] = []
    warm: list[Sample] = []
    for number, batching in enumerate(schedule(args.batching, args.rounds)):
        log_path = workdir / f"server-{number}.log"
        round_env = env | (BATCHING_OFF if batching == "off" else {})

        def serve(port: int) -> list[str]:
            return bench.cli("serve", "--host", "127.0.0.1", "--port", str(port))

        with bench.serving(serve, round_env, log_path) as server:
            url, pid = server.url, server.process.pid
            log(f"round {number + 1}, batching {batching}: warm-up, one request of each kind")
            warm = []
            for operation in OPERATIONS:
                only = Workload(work.photos, work.count, work.k, {operation: 1.0}, work.headers)
                warm += asyncio.run(run_load(url, only, 1, 300, timeout=300, max_requests=1)).samples
            if any(s.error for s in warm):
                raise SystemExit(f"warm-up failed: {[s.error for s in warm]}")
            for mix in args.mix:
                log(f"  {mix}: {args.clients} clients for {args.seconds:g} s")
                load_before_round = bench.loadavg()
                server_cpu = _process_cpu_seconds(pid)
                driver_cpu = resource.getrusage(resource.RUSAGE_SELF)
                mixed = Workload(work.photos, work.count, work.k, dict(MIXES[mix]), work.headers)
                result = asyncio.run(run_load(url, mixed, args.clients, args.seconds, timeout=args.timeout,
                                              max_requests=args.max_requests, seed=args.seed + number))
                server_cpu = _process_cpu_seconds(pid) - server_cpu
                after = resource.getrusage(resource.RUSAGE_SELF)
                driver_cpu_s = (after.ru_utime - driver_cpu.ru_utime) + (after.ru_stime - driver_cpu.ru_stime)
                stats = result.stats()["all"]
                log(f"    {stats['rps']:.1f} req/s, p50 {stats['p50']:.0f} ms, p99 {stats['p99']:.0f} ms, "
                    f"{stats['errors']} errors")
                rounds.append({"mix": mix, "batching": batching, "result": result,
                               "server_cpu_cores": server_cpu / result.elapsed,
                               "driver_cpu_cores": driver_cpu_s / result.elapsed,
                               "loadavg": (load_before_round, bench.loadavg())})
            metrics = httpx.get(f"{url}/metrics", headers=work.headers, timeout=60).text
        with open(workdir / f"samples-{number}.json", "w") as out:  # for a closer look, with --keep
            json.dump([{"mix": r["mix"], **vars(sample)} for r in rounds[-len(args.mix):]
                       for sample in r["result"].samples], out)
    logs = sorted(workdir.glob("server-*.log"))
    server_errors = [line for path in logs for line in path.read_text().splitlines()
                     if "Traceback" in line or re.search(r'" (5\d\d)\b', line)]
    last = rounds[-1]
    return {
        "args": vars(args) | {"data": str(args.data)},
        "machine": bench.machine(),
        "model": "tiny-clip (tests/tiny-clip.json)" if args.model == "tiny" else args.model,
        "photos": len(photos),
        "index_s": index_s,
        "warmup_ms": {s.operation: s.ms for s in warm},
        "rounds": rounds,
        "result": last["result"],
        "server_cpu_cores": last["server_cpu_cores"],
        "driver_cpu_cores": last["driver_cpu_cores"],
        "loadavg": (load_before, bench.loadavg()),
        "cache_hits": bench.metric(metrics, "clipsearch_text_cache_hits_total"),
        "cache_misses": bench.metric(metrics, "clipsearch_text_cache_misses_total"),
        "server_log_errors": server_errors[:20],
    }


def schedule(batching: str, rounds: int) -> list[str]:
    """The batching setting of each server round: one setting `rounds` times, or both alternately
    (on, off, off, on, on, off, ...: each pair starts with the other side than the pair before)."""
    if batching != "compare":
        return [batching] * rounds
    return [side for pair in range(rounds) for side in (("on", "off") if pair % 2 == 0 else ("off", "on"))]


# --- report -----------------------------------------------------------------------------------------------


def table(result: LoadResult) -> list[str]:
    lines = ["| operation | requests | errors | req/s | p50 ms | p95 ms | p99 ms | max ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in result.stats().items():
        label = OPERATION_NAMES.get(name, "**all**")
        lines.append(f"| {label} | {row['requests']} | {row['errors']} | {row['rps']:.1f} | "
                     f"{row['p50']:.0f} | {row['p95']:.0f} | {row['p99']:.0f} | {row['max']:.0f} |")
    return lines


def command_line(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python scripts/bench_load.py", f"--clients {args.clients}",
             f"--seconds {args.seconds:g}"]
    defaults = {"model": "tiny", "photos": 200, "k": 10, "timeout": 60.0, "seed": 0, "batching": "on",
                "rounds": 1}
    for name, default in defaults.items():
        value = getattr(args, name)
        if value != default:
            parts.append(f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}")
    if args.mix != ["mixed"]:
        parts.append("--mix " + " ".join(args.mix))
    if args.api_key:
        parts.append("--api-key KEY")
    return " ".join(parts)


def subsection(run: dict[str, Any], args: argparse.Namespace) -> str:
    result: LoadResult = run["result"]
    errors = result.errors
    error_text = ("none" if not errors else
                  "; ".join(f"{count} x {message}" for message, count in errors.most_common(10)))
    hits, misses = run["cache_hits"], run["cache_misses"]
    cache = (f"text-embedding cache: {hits:.0f} hits, {misses:.0f} misses (warm-up included)"
             if hits is not None and misses is not None else "text-embedding cache: not reported")
    mix = ", ".join(f"{OPERATION_NAMES[op]} {share:.0%}" for op, share in DEFAULT_MIX.items())
    lines = [
        f"### {run['model']}, random weights: {result.clients} clients x {result.seconds:g} s",
        *_provenance(run, args),
        f"Collection: {run['photos']} real photos (imagenet-samples), indexed in {run['index_s']:.1f} s. "
        f"Mix: {mix}; k = {args.k}. Warm-up (not counted): "
        + ", ".join(f"{OPERATION_NAMES[op]} {ms:.0f} ms" for op, ms in run["warmup_ms"].items()) + ".",
        "",
        *table(result),
        "",
        f"Errors: {error_text}. Requests answered within the {args.timeout:g} s client timeout count; every "
        f"answer was checked. Run length {result.elapsed:.1f} s (requests start for {result.seconds:g} s, "
        f"then the ones in flight finish). Server process CPU: {run['server_cpu_cores']:.2f} cores; "
        f"load generator CPU: {run['driver_cpu_cores']:.2f} cores; {cache}"
        + (" (other jobs were running on the machine: absolute numbers are low)."
           if run["loadavg"][0][0] > 1.0 else "."),
    ]
    if run["server_log_errors"]:
        found = "; ".join(f"`{line.strip()}`" for line in run["server_log_errors"])
        lines += ["", f"Server log errors: {found}"]
    return "\n".join(lines) + "\n"


def _provenance(run: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The lines under a section's title: its command, the machine and its load, where and when."""
    return [
        "",
        f"Command: `{command_line(args)}`",
        "",
        f"{bench.machine_line(run['machine'], *run['loadavg'])} Server and load generator on the same "
        f"machine, over loopback. Run on {time.strftime('%Y-%m-%d')}.",
        "",
    ]


def _text_kinds(per_side: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Text latencies by kind, each side's rounds pooled: half the texts are encoded and half come from
    the cache, so the median of both together falls between two groups and moves with their shares."""
    lines = []
    for kind in ("encoded", "cached"):
        pct = {side: bench.percentiles([s.ms for r in per_side.get(side, []) for s in r["result"].samples
                                        if s.kind == kind and s.error is None], (50, 95))
               for side in ("on", "off")}
        if any(np.isnan(pct[side]["p50"]) for side in pct):
            continue
        lines.append(f"  - text {kind}: p50 {pct['on']['p50']:.1f} ms on, {pct['off']['p50']:.1f} ms off "
                     f"({pct['on']['p50'] / pct['off']['p50']:.2f}x); p95 {pct['on']['p95']:.1f} against "
                     f"{pct['off']['p95']:.1f} ms")
    return lines


def comparison(run: dict[str, Any], args: argparse.Namespace) -> str:
    """The subsection of a --batching compare run: per mix, each side's rounds, and the on/off ratios."""
    rounds = run["rounds"]
    lines = [
        f"### {run['model']}, random weights, query batching on vs off, {args.clients} clients: "
        f"{args.rounds} round(s) of {args.seconds:g} s per side",
        *_provenance(run, args),
        f"Collection: {run['photos']} real photos (imagenet-samples), indexed in {run['index_s']:.1f} s; "
        f"k = {args.k}. On: the default settings (query_batch 16, query_batch_wait_ms 3); off: "
        "CLIPSEARCH_QUERY_BATCH=1 (one encoder call per query, one at a time per tower). A new server per "
        "round, warmed up by one request of each kind (not counted); order "
        + ", ".join(schedule("compare", args.rounds)) + ". Latencies pooled over a side's rounds.",
        "",
        "| mix | batching | req/s per round | req/s (median) | p50 ms | p95 ms | p99 ms | max ms | requests "
        "| errors | server CPU cores | load avg (1 min) per round |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ratios_text = []
    for mix in args.mix:
        per_side: dict[str, list[dict[str, Any]]] = {}
        for found in rounds:
            if found["mix"] == mix:
                per_side.setdefault(found["batching"], []).append(found)
        for side in ("on", "off"):
            chosen = per_side.get(side, [])
            if not chosen:
                continue
            samples = [s for r in chosen for s in r["result"].samples]
            ok = [s.ms for s in samples if s.error is None]
            rps = [r["result"].stats()["all"]["rps"] for r in chosen]
            pct = bench.percentiles(ok)
            cpu = sum(r["server_cpu_cores"] for r in chosen) / len(chosen)
            loads = ", ".join(f"{r['loadavg'][0][0]:.1f}" for r in chosen)
            lines.append(
                f"| {mix} | {side} | {', '.join(f'{x:.1f}' for x in rps)} | {float(np.median(rps)):.1f} | "
                f"{pct['p50']:.0f} | {pct['p95']:.0f} | {pct['p99']:.0f} | "
                f"{max(ok, default=float('nan')):.0f} | "
                f"{len(samples)} | {len(samples) - len(ok)} | {cpu:.2f} | {loads} |")
        pairs = list(zip(per_side.get("on", []), per_side.get("off", []), strict=False))
        if pairs:
            rps_ratios = [a["result"].stats()["all"]["rps"] / max(b["result"].stats()["all"]["rps"], 1e-9)
                          for a, b in pairs]
            p50_ratios = [a["result"].stats()["all"]["p50"] / max(b["result"].stats()["all"]["p50"], 1e-9)
                          for a, b in pairs]
            ratios_text.append(
                f"- {mix}: req/s on/off per pair {', '.join(f'{x:.2f}' for x in rps_ratios)}, median "
                f"**{float(np.median(rps_ratios)):.2f}x**; p50 on/off per pair "
                f"{', '.join(f'{x:.2f}' for x in p50_ratios)}")
            ratios_text += _text_kinds(per_side)
    errors = Counter(s.error for r in rounds for s in r["result"].samples if s.error is not None)
    error_text = ("none" if not errors else
                  "; ".join(f"{count} x {message}" for message, count in errors.most_common(10)))
    lines += ["", "Ratios (rounds paired in order):", "", *ratios_text, "",
              f"Errors: {error_text}; every answer was checked."]
    if run["server_log_errors"]:
        found = "; ".join(f"`{line.strip()}`" for line in run["server_log_errors"])
        lines += ["", f"Server log errors: {found}"]
    return "\n".join(lines) + "\n"


INTRO = """\
`scripts/bench_load.py` indexes real photos with `clipsearch index`, starts `clipsearch serve` as a
separate process and drives it on loopback with N concurrent clients (asyncio + httpx, one keep-alive
connection each, one request at a time) for S seconds. Each client draws from a seeded mix: text
search (half distinct texts, each run through the text encoder, half from a fixed set of 20 answered
from the text-embedding cache), image search (an indexed photo uploaded as multipart) and classify
(an indexed photo with 3-6 labels, each label encoded with 8 prompt templates). Every answer is
checked: the status, and its content (k results best first; the uploaded photo among the top-scored
hits; exactly the labels sent, best first, summing to 1). An error is any non-2xx status, any
exception (a timeout at 60 s included) or any wrong answer. req/s counts requests answered right,
over the whole run; latencies are measured by the client, from sending to the checked answer, so they
include the time a request waits its turn: until issue 17 the server ran one model or store call at a
time per collection (search_api/engines.py), so with 50 clients most of a latency was queueing; since
then queries encode outside the collection's lock, concurrent ones batched together (settings
query_batch, query_batch_wait_ms; the "batching on vs off" subsections compare). Queued calls are admitted
in arrival order (`FifoLock`): with a plain `threading.Lock`, a ViT-B-32 run (2026-11-22, torch on the
query path) had a median of 14 s but a maximum of 57 s, a request overtaken again and again by later
ones, near the 60 s client timeout (in arrival order: 26 and 27 s at most in two runs). The runs of
2026-11-22 gave 79 (tiny) and 2.8 (ViT-B-32) req/s at a load average of 5-9; the runs below came after
the ONNX query path and after `clipsearch serve` stopped holding each response ~40 ms (Nagle's
algorithm), on a quieter machine: not a side-by-side ratio.
The random-weight models have the compute of trained ones; the tiny one shows the HTTP, decoding and
queueing overhead."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients [50]")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long requests are started [60]")
    parser.add_argument("--model", default="tiny",
                        help="tiny (tests/tiny-clip.json) or an open_clip architecture, e.g. ViT-B-32; "
                             "random weights either way [tiny]")
    parser.add_argument("--photos", type=int, default=200, help="photos to index [200]")
    parser.add_argument("--data", type=Path, default=bench.IMAGES, help=f"photo folder [{bench.IMAGES}]")
    parser.add_argument("--k", type=int, default=10, help="results per search [10]")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s [60]")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many [1000000]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clients' random choices [0]")
    parser.add_argument("--api-key", default=None, help="serve with this API key and send it")
    parser.add_argument("--mix", nargs="+", choices=list(MIXES), default=["mixed"],
                        help="text (text searches only), image (image searches only), mixed (the mix "
                             "above); several run one after another on each server [mixed]")
    parser.add_argument("--batching", choices=["on", "off", "compare"], default="on",
                        help="query batching on (the defaults), off (CLIPSEARCH_QUERY_BATCH=1), or both "
                             "in alternating rounds with the on/off ratio [on]")
    parser.add_argument("--rounds", type=int, default=1,
                        help="servers started per setting (each runs every --mix once) [1]")
    parser.add_argument("--out", type=Path, default=bench.DOC,
                        help=f"the doc whose section is rewritten [{bench.DOC}]")
    parser.add_argument("--no-doc", action="store_true", help="print the section, leave the doc alone")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log, collection)")
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--clients, --seconds and --rounds must be positive")

    workdir = Path(tempfile.mkdtemp(prefix="bench_load-"))
    try:
        run = measure(args, workdir)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    errors = sum(len(r["result"].errors) for r in run["rounds"])
    text = comparison(run, args) if args.batching == "compare" else subsection(run, args)
    print(text)
    if not args.no_doc:
        bench.write_subsection(args.out, SECTION, INTRO, text.split(":", 1)[0] + ":", text)
        log(f"updated {args.out}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
