"""All settings in one place: flags override `CLIPSEARCH_*` environment variables, which override defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

StoreKind = Literal["edge", "qdrant", "faiss"]
DeviceName = Literal["auto", "cpu", "cuda"]
QuantizationKind = Literal["none", "int8"]
PrecisionName = Literal["fp32", "int8"]


def _default_home() -> Path:
    return Path.home() / ".clipsearch"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPSEARCH_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data directory (embedded stores, locks).")
    collection: str = Field("default", description="Collection used when none is named.")

    model: str = Field("ViT-B-32", description="open_clip architecture name or path to a model-config JSON.")
    pretrained: str = Field(
        "laion2b_s34b_b79k", description="open_clip pretrained tag or path to a local checkpoint file."
    )
    device: DeviceName = Field("auto", description="auto picks CUDA when present.")
    batch_size: int = Field(
        0, ge=0, description="Images per encoder batch; 0: sized to the device (256 on CUDA, 64 on CPU)."
    )
    workers: int = Field(
        0,
        ge=0,
        description="Decode worker processes; 0: sized to the device (one per core on CUDA; on CPU, where "
        "the encoder needs the cores, one per 4 cores, at least 1). See docs/benchmarks.md.",
    )
    precision: PrecisionName = Field(
        "fp32",
        description="Image encoder: fp32 (exact; fp16 autocast on CUDA) or int8, the approximate CPU fast "
        "path (dynamic int8 quantisation, embeddings within cosine ~0.999). Recorded with a collection.",
    )
    gpu_decode: bool = Field(
        True, description="On CUDA, decode baseline JPEGs on the GPU (nvJPEG via torchvision); others on CPU."
    )

    store: StoreKind = Field("edge", description="edge (embedded, default), qdrant (server) or faiss.")
    qdrant_url: str | None = Field(None, description="Qdrant server URL, for store=qdrant.")
    qdrant_api_key: str | None = Field(None, description="Qdrant server API key.")
    qdrant_path: Path | None = Field(
        None, description="Use qdrant-client's local mode at this path instead of a server (testing)."
    )
    qdrant_shards: int = Field(1, ge=1, description="Shards for collections created on a Qdrant server.")
    qdrant_replicas: int = Field(1, ge=1, description="Replication factor on a Qdrant server.")

    # Search tuning for the Qdrant stores (edge and server), chosen for recall first; see docs/benchmarks.md.
    hnsw_ef: int = Field(
        256, ge=1, description="HNSW candidates explored per query (edge, qdrant): higher recall, slower."
    )
    quantization: QuantizationKind = Field(
        "int8",
        description="int8: scalar-quantised vectors in RAM, originals on disk, results rescored with "
        "the originals (about 4x less RAM). Set when a collection is created; an existing edge collection "
        "gets it when an index run next changes it. none: full-precision vectors in RAM (int8 stays int8).",
    )
    oversampling: float = Field(
        2.0, ge=1.0, description="With quantization: candidates rescored with the originals, per result."
    )

    faiss_index: Literal["auto", "flat", "hnsw", "ivfpq"] = Field(
        "auto", description="FAISS index: auto (exact below 100k vectors, HNSW above), flat, hnsw, ivfpq."
    )
    faiss_refine: Literal["flat", "sq8", "none"] = Field(
        "flat", description="IVF-PQ rescoring: exact (flat), int8 (sq8, 4x less RAM) or none."
    )

    api_key: str | None = Field(None, description="When set, every API route but /healthz needs it.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Allowed CORS origins; empty: CORS off."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest accepted upload.")
    max_image_pixels: int = Field(100_000_000, ge=1, description="Largest decoded image (width x height).")
    max_k: int = Field(1000, ge=1, description="Largest number of results one query may ask for.")

    vlm_url: str | None = Field(None, description="OpenAI-compatible chat endpoint for re-ranking.")
    vlm_model: str | None = Field(None, description="Model name to send to the VLM endpoint.")

    api_url: str = Field("http://127.0.0.1:8000", description="Where the UI finds the API.")

    def collection_dir(self, name: str) -> Path:
        return self.home / "collections" / name
