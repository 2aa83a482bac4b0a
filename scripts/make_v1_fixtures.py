"""Build tests/fixtures/v1/: small collections written by the previous release's own store code.

    .venv/bin/python scripts/make_v1_fixtures.py [--release 243966a] [--worktree /tmp/v1]

The previous release (the last commit before the schema redesign) is checked out as a git worktree
and its store code runs in a subprocess with PYTHONPATH pointing at it, so every file in the
fixtures is exactly what that release wrote: an Edge shard, a FAISS directory and a qdrant-client
local-mode folder, each holding one collection "photos" of 20 points of 8 dims. Each is packed as
`<store>.tar.gz` (members under `home/` and, for qdrant, `qdrant/`), and `expected.json` records the
points, the info and, for a few fixed queries, the ids and scores the old code returned.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "v1"
RELEASE = "243966a"
STORES = ("edge", "faiss", "qdrant")
COLLECTION = "photos"
N, DIM, K = 20, 8, 5
MAX_TOTAL_BYTES = 300_000

MODEL = {
    "model": "ViT-B-32",
    "pretrained": "laion2b_s34b_b79k",
    "architecture": "ViT-B-32",
    "weights": "laion2b_s34b_b79k",
    "dim": DIM,
    "precision": "fp32",
}
FAILED = {"/photos/broken.jpg": {"reason": "cannot identify image file"}}


def points() -> list[dict]:
    """The points every fixture holds: seeded unit vectors, payloads as the old indexer wrote them."""
    import numpy as np

    vectors = np.random.default_rng(7).standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        {
            "id": f"00000000-0000-4000-8000-{i + 1:012d}",
            "vector": [float(x) for x in vectors[i]],
            "payload": {
                "uri": f"/photos/img{i:02d}.jpg",
                "path": f"img{i:02d}.jpg",
                "fingerprint": f"{1000 + i}:{1_700_000_000 + i}",
                "metadata": {"width": 100 + 10 * i, "height": 50 + 5 * (i % 7)},
            },
        }
        for i in range(N)
    ]


def queries() -> list[list[float]]:
    import numpy as np

    found = np.random.default_rng(8).standard_normal((3, DIM)).astype(np.float32)
    found /= np.linalg.norm(found, axis=1, keepdims=True)
    return [[float(x) for x in q] for q in found]


def build(store_kind: str, root: Path) -> dict:
    """Runs under the OLD release: write the collection with its store code, return its answers."""
    import numpy as np

    from indexer.settings import Settings  # the old release's, via PYTHONPATH
    from indexer.stores import Record, open_store

    settings = Settings(home=root / "home", store=store_kind, qdrant_path=root / "qdrant")
    store = open_store(settings, COLLECTION, DIM)
    store.upsert([Record(id=p["id"], vector=np.array(p["vector"], np.float32), payload=p["payload"])
                  for p in points()])
    store.write_info({"model": MODEL, "failed": FAILED})
    store.flush()
    store.close()
    store = open_store(settings, COLLECTION)  # answers as read back, after a reopen
    results = [[{"id": h.id, "score": h.score} for h in store.search(np.array(q, np.float32), K)]
               for q in queries()]
    info = store.read_info()
    store.close()
    return {"results": results, "info": info}


def pack(root: Path, target: Path) -> None:
    with tarfile.open(target, "w:gz", compresslevel=9) as tar:
        for top in ("home", "qdrant"):
            if (root / top).exists():
                tar.add(root / top, arcname=top, filter=_normalised)


def _normalised(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.mtime = 0
    return member


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default=RELEASE)
    parser.add_argument("--worktree", type=Path, default=Path("/tmp/v1"))
    parser.add_argument("--build", choices=STORES, help=argparse.SUPPRESS)  # the subprocess mode
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build(args.build, args.root)))
        return

    if not (args.worktree / "indexer" / "stores" / "edge.py").is_file():
        subprocess.run(["git", "worktree", "add", "--detach", str(args.worktree), args.release],
                       cwd=REPO, check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    expected: dict = {"release": args.release, "collection": COLLECTION, "k": K, "model": MODEL,
                      "failed": FAILED, "points": points(), "queries": queries(), "stores": {}}
    env = {**os.environ, "PYTHONPATH": str(args.worktree), "HF_HUB_OFFLINE": "1"}
    for kind in STORES:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--build", kind, "--root", str(root)],
                cwd=tmp, env=env, check=True, capture_output=True, text=True,
            )
            expected["stores"][kind] = json.loads(done.stdout.strip().splitlines()[-1])
            pack(root, OUT / f"{kind}.tar.gz")
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(REPO)}  {path.stat().st_size} bytes")
    if total > MAX_TOTAL_BYTES:
        sys.exit(f"fixtures take {total} bytes, more than {MAX_TOTAL_BYTES}")


if __name__ == "__main__":
    main()
