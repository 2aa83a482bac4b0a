"""All settings in one class: flags override `CLIPSEARCH_*` environment variables, which override defaults.

Sections per backend and per service are nested models; their variables join the section and the
field with one underscore (`CLIPSEARCH_QDRANT_URL` is `settings.qdrant.url`). The README's settings
table is generated from the fields' own descriptions (`markdown_table`; a test keeps them equal).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

StoreKind = Literal["edge", "qdrant", "faiss"]
DeviceName = Literal["auto", "cpu", "cuda"]
QuantizationKind = Literal["none", "int8"]
PrecisionName = Literal["fp32", "int8", "bf16"]
ENV_PREFIX = "CLIPSEARCH_"
# Names DESIGN.md gives settings that live in a section: read too, below the section's own name.
ENV_ALIASES: dict[str, tuple[str, str]] = {"CLIPSEARCH_READ_KEYS": ("api", "read_keys")}


def _default_home() -> Path:
    return Path.home() / ".clipsearch"


class QdrantSettings(BaseModel):
    """The Qdrant server backend (store=qdrant)."""

    url: str | None = Field(None, description="Qdrant server URL, for `CLIPSEARCH_STORE=qdrant`.")
    api_key: str | None = Field(None, description="Qdrant server API key.")
    path: Path | None = Field(
        None, description="Use qdrant-client's local mode in this folder instead of a server (for tests)."
    )
    shards: int = Field(1, ge=1, description="Shards of collections created on a Qdrant server.")
    replicas: int = Field(1, ge=1, description="Replication factor of new collections on a Qdrant server.")


class FaissSettings(BaseModel):
    """The FAISS backend (store=faiss)."""

    index: Literal["auto", "flat", "hnsw", "ivfpq"] = Field(
        "auto",
        description="FAISS index: `auto` (exact below 100k vectors, HNSW above), `flat`, `hnsw`, `ivfpq`.",
    )
    refine: Literal["flat", "sq8", "none"] = Field(
        "flat", description="IVF-PQ rescoring: `flat` (exact), `sq8` (int8, 4x less RAM) or `none`."
    )


class FetchSettings(BaseModel):
    """Images by URL in catalogs (ingest.fetch): limits, retries, the on-disk cache, and which hosts."""

    allow_private: bool = Field(
        False,
        description="Fetch from loopback and private-network hosts (intranet catalogs). Link-local "
        "(169.254.0.0/16, the cloud metadata service), multicast and reserved addresses stay refused.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to connect to an image host.")
    read_timeout_s: float = Field(20.0, gt=0, description="Seconds one read of an image download may wait.")
    deadline_s: float = Field(
        120.0, gt=0, description="Seconds one download attempt may take in all (a host trickling bytes)."
    )
    concurrency: int = Field(16, ge=1, description="Image downloads in flight at once.")
    max_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Larger images are refused, counted while they stream."
    )
    retries: int = Field(
        3, ge=0, description="Retries of a download after a 5xx, a 429, a timeout or a dropped connection."
    )
    backoff_s: float = Field(
        0.5, ge=0, description="Wait before the first retry, doubled for each next one (a 429's "
        "Retry-After, up to 30 s, wins)."
    )
    max_redirects: int = Field(
        5, ge=0, description="Redirects followed, each one checked like the first URL."
    )
    cache_dir: Path | None = Field(
        None,
        description="Downloaded images, revalidated with ETag/Last-Modified on re-runs; empty: "
        "`cache/fetch` under the home.",
    )


class ApiSettings(BaseModel):
    """The HTTP API: its key and limits, and where clients (the UI) find it."""

    key: str | None = Field(
        None,
        description="When set, every API route but `/healthz` and `/readyz` needs it "
        "(`X-API-Key` or `Authorization: Bearer`). The UI sends it too (`clipsearch ui --api-key`).",
    )
    url: str = Field("http://127.0.0.1:8000", description="Where the UI finds the API.")
    cors_origins: list[str] = Field(
        default_factory=list, description="JSON list of allowed CORS origins; CORS is off when empty."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Larger uploads get 413.")
    max_restore_bytes: int = Field(
        4 * 1024**3, ge=1, description="Largest snapshot archive `POST /v1/collections/{c}/restore` takes "
        "(`clipsearch.connect(...).restore`); larger get 413. The archive is kept on disk while it loads.",
    )
    max_k: int = Field(1000, ge=1, description="Most results one query may ask for.")
    read_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys that may only read (search, classify, explain, GET): any write "
        "(items, vectors, label reviews) gets 403. `key` may do everything. docs/search.md.",
    )

    @field_validator("read_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment variable: a,b,c
            return [key.strip() for key in value.split(",") if key.strip()]
        return value


class LimitsSettings(BaseModel):
    """Bounds on the work one request, write or catalog run may ask for: past them it is refused at
    once (a 4xx, a recorded bad row), never a hang."""

    item_fields: int = Field(
        256, ge=1, description="Metadata fields (text fields included) one item may carry; more: 400."
    )
    indexed_fields: int = Field(
        256,
        ge=1,
        description="Fields a collection declares and indexes. A new field past it that no `--field` "
        "declares is stored with the item but not indexed (not filterable), and the write says so.",
    )
    metadata_bytes: int = Field(
        64 * 1024, ge=1, description="Bytes of one item's metadata and text as JSON; more: 400 or a bad row."
    )
    catalog_columns: int = Field(
        1000, ge=1, description="Columns a catalog may have; a wider one is refused before any row is stored."
    )
    json_depth: int = Field(
        32,
        ge=2,
        description="Nesting depth of JSON in a request (filters, metadata, form fields) or a flag "
        "(`--filter`); deeper: 400.",
    )
    filter_conditions: int = Field(
        1000, ge=1, description="Conditions in one filter, nested filters' included; more: 400."
    )
    filter_values: int = Field(
        10_000, ge=1, description="Values in a filter's `match.any`/`match.except` lists together; more: 400."
    )
    ids: int = Field(
        10_000, ge=1, description="Item ids one request may name (a filter's `has_id`, id lists); more: 400."
    )
    decode_pixels: int = Field(
        200_000_000,
        ge=1,
        description="Pixels of uploaded images being decoded at once by a server; an upload past it "
        "waits (see `decode_wait_s`). One image alone is always admitted.",
    )
    decode_wait_s: float = Field(
        10.0, ge=0, description="Seconds an upload waits for `decode_pixels` room before a 503 (retry later)."
    )


VlmMode = Literal["pointwise", "listwise"]


class VlmSettings(BaseModel):
    """The optional vision-language model that re-ranks and explains hits (docs/vlm.md)."""

    url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible chat endpoint that takes images (e.g. "
        "`http://localhost:8001/v1`); the VLM stage is off when empty.",
    )
    model: str | None = Field(
        None, description="Model name sent to the VLM endpoint; empty: the first one its `/models` lists."
    )
    api_key: str | None = Field(None, description="Sent to the VLM endpoint as `Authorization: Bearer`.")
    timeout_s: float = Field(
        30.0, gt=0, description="Seconds one VLM request may wait to connect or for each read."
    )
    deadline_s: float = Field(
        20.0, gt=0, description="Seconds a whole re-rank may take; hits not scored by then keep their place."
    )
    concurrency: int = Field(4, ge=1, description="Most requests in flight to the VLM at once, per process.")
    top_n: int = Field(20, ge=1, description="Hits re-ranked when a request does not say.")
    mode: VlmMode = Field(
        "pointwise",
        description="`pointwise` (each hit scored 0-10 in its own request) or `listwise` (all thumbnails "
        "in one request; for models that take several images).",
    )
    thumbnail_px: int = Field(
        512, ge=32, description="Longest side of the JPEG thumbnails sent to the VLM, in pixels."
    )
    cache_size: int = Field(
        10_000, ge=0, description="Scores and explanations kept in memory (least recently used dropped)."
    )


class _EnvAliases(PydanticBaseSettingsSource):
    """The variables of ENV_ALIASES, as their sections' fields."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the aliases whole

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for variable, (section, name) in ENV_ALIASES.items():
            if variable in os.environ:
                found.setdefault(section, {})[name] = os.environ[variable]
        return found


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="_", env_nested_max_split=1, extra="ignore"
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _EnvAliases(settings_cls), dotenv_settings, file_secret_settings

    home: Path = Field(
        default_factory=_default_home, description="Data directory: embedded stores, locks, exported models."
    )
    collection: str = Field("default", description="Collection used when `--collection` is not given.")
    store: StoreKind = Field(
        "edge", description="`edge` (embedded Qdrant Edge, default), `qdrant` (server) or `faiss`."
    )

    model: str = Field(
        "ViT-B-32",
        description="open_clip architecture name, or path of a model-config JSON, for new "
        "collections and vectors (existing ones use the model recorded with them).",
    )
    pretrained: str = Field(
        "laion2b_s34b_b79k", description="open_clip pretrained tag, or path of a checkpoint file."
    )
    device: DeviceName = Field("auto", description="`auto` (CUDA when present), `cpu`, `cuda`.")
    batch_size: int = Field(
        0, ge=0, description="Images per encoder batch; 0: sized to the device (256 on CUDA, 64 on CPU)."
    )
    workers: int = Field(
        0,
        ge=0,
        description="Decode processes; 1: a decode thread in the indexing process; 0: sized to the device "
        "(one per core on CUDA; on CPU one per 4 cores, at least 1). See docs/benchmarks.md.",
    )
    precision: PrecisionName = Field(
        "fp32",
        description="Image encoder: `fp32` (exact; fp16 autocast on CUDA), `int8`, the approximate CPU "
        "fast path (embeddings within cosine ~0.999), or `bf16` (a bfloat16 image tower, cosine ~0.9999; for "
        "CPUs with AVX512-BF16/AMX). A collection keeps the precision it was built with.",
    )
    gpu_decode: bool = Field(
        True, description="On CUDA, decode baseline JPEGs on the GPU (nvJPEG); other files on CPU."
    )
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="Larger images (width x height) are refused, files and uploads alike."
    )
    min_free_disk_mb: int = Field(
        64, ge=0, description="Writes to an embedded collection are refused (disk full, one line) while its "
        "disk has less free space than this, before anything is written; reads go on.",
    )

    # Search tuning, chosen for recall first; see docs/benchmarks.md.
    hnsw_ef: int = Field(
        256,
        ge=1,
        description="HNSW candidates explored per query (edge, qdrant and faiss): higher recall, slower.",
    )
    quantization: QuantizationKind = Field(
        "int8",
        description="`int8`: int8 vectors in RAM, float32 originals on disk, results rescored (about 4x "
        "less RAM); `none`: float32 in RAM. Applies to new collections (edge: also at the next write).",
    )
    oversampling: float = Field(
        2.0, ge=1.0, description="With `int8`: candidates rescored with the originals, per result."
    )
    query_batch: int = Field(
        16,
        ge=1,
        le=256,
        description="Most query texts (and, separately, images) encoded in one encoder call when queries "
        "arrive together (server, or the library from several threads); `1` turns batching off.",
    )
    query_batch_wait_ms: float = Field(
        3.0,
        ge=0,
        le=100,
        description="Milliseconds a query batch may wait for more queries while others are in flight; "
        "never when a query is alone.",
    )
    browse_max_items: int = Field(
        100_000, ge=1,
        description="A browse (a search without a query: filter and sort) sorts at most this many items; "
        "a filter that keeps more is refused, to be narrowed.",
    )

    fetch: FetchSettings = Field(default_factory=FetchSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    faiss: FaissSettings = Field(default_factory=FaissSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    vlm: VlmSettings = Field(default_factory=VlmSettings)

    def collection_dir(self, name: str) -> Path:
        return self.home / "collections" / name

    @property
    def store_shared(self) -> bool:
        """Whether the store's collections are shared between processes (a Qdrant server, which every
        process opens directly), rather than embedded (edge, FAISS, qdrant-client's local mode: open
        in one process at a time, so others go through the server that holds one)."""
        return self.store == "qdrant" and self.qdrant.path is None

    def store_location(self) -> str:
        """Where the store keeps its collections: the Qdrant server's URL or local folder, else the home."""
        if self.store == "qdrant":
            return self.qdrant.url if self.store_shared and self.qdrant.url else \
                str(Path(self.qdrant.path or ".").resolve())
        return str(self.home.resolve())

    def with_flags(self, **flags: Any) -> Settings:
        """A copy with the flags that were given (not None); nested ones as `section={"field": value}`."""
        given = {name: value for name, value in flags.items() if value is not None}
        if not given:
            return self
        merged = self.model_dump()
        for name, value in given.items():
            merged[name] = {**merged[name], **value} if isinstance(value, dict) else value
        # Validated like any other source; the flags count as set (so they win over recorded choices).
        updated = type(self).model_validate(merged)
        object.__setattr__(updated, "__pydantic_fields_set__", self.model_fields_set | set(given))
        return updated


def settings_rows() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of every setting, in declaration order, sections inline."""
    rows = []
    for name, info in Settings.model_fields.items():
        section = info.annotation if isinstance(info.annotation, type) else None
        if section is not None and issubclass(section, BaseModel):
            for sub, sub_info in section.model_fields.items():
                variable = f"{ENV_PREFIX}{name}_{sub}".upper()
                rows.append((variable, _default(sub_info), sub_info.description or ""))
        else:
            rows.append((f"{ENV_PREFIX}{name}".upper(), _default(info), info.description or ""))
    for variable, (section, name) in ENV_ALIASES.items():
        canonical = f"{ENV_PREFIX}{section}_{name}".upper()
        rows.append((variable, "", f"The same as `{canonical}` (its name in DESIGN.md); `{canonical}` wins "
                     "when both are set."))
    return rows


def _default(info: Any) -> str:
    if info.default_factory is _default_home:
        return "~/.clipsearch"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def markdown_table() -> str:
    """The README's settings table, generated from the fields above."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, default, meaning in settings_rows():
        shown = f"`{default}`" if default else ""
        lines.append(f"| `{variable}` | {shown} | {meaning} |")
    return "\n".join(lines)
