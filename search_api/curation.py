"""Review of label runs (`clipsearch label`) over HTTP: the runs of a collection, counts per label, the
items of one label (or "unsure") page by page, and people's decisions on items or selections.

A decision is stored on the item as `human_label` (a label, or "rejected") and `human_label_at`; every
reader prefers it to the zero-shot label afterwards (indexer.curation.labels). Writes run in the server, under
the collection's lock, on the store its engine holds.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from search_api.deps import EnginesDep
from search_api.engines import collection as collection_of
from search_api.schemas import CollectionPath, ErrorResponse, PromptTemplates

router = APIRouter(prefix="/v1/collections/{collection}/labels", tags=["labels"])
MAX_PAGE = 500
MAX_SELECTION = 10_000
MAX_LABELS = 1000  # a label run's classes (ImageNet's 1000): each costs one text encode per template

RunPath = Annotated[str, Path(description="Label run name (the field `clipsearch label --run` wrote).")]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


class LabelRun(BaseModel):
    run: str
    labels: list[str] = Field(description="The run's labels, in the order given.")
    templates: list[str] = Field(default_factory=list, description="The prompt templates it used.")
    top_k: int
    threshold: float = Field(description='Items whose best score was under this are "unsure".')
    vector: str = Field(description="The stored vector the run read.")
    labeled: int = Field(description="Items the run labelled.")
    at: str = Field(description="When the run finished (RFC 3339, UTC).")


class LabelRunsResponse(BaseModel):
    runs: list[LabelRun]


class LabelCounts(BaseModel):
    run: str
    counts: dict[str, int] = Field(description='Items by label, a person\'s decision first ("unsure" and '
                                   '"rejected" included).')
    zero_shot: dict[str, int] = Field(description="Items by the run's own label.")
    reviewed: int = Field(description="Items a person decided on.")
    total: int


class ScoredLabel(BaseModel):
    label: str
    score: float


class ReviewItem(BaseModel):
    id: str
    uri: str
    label: str | None = Field(description='The zero-shot label, or "unsure".')
    score: float | None = Field(description="The best label's score.")
    top: list[ScoredLabel] = Field(description="The run's top labels, best first.")
    human_label: str | None = Field(description='A person\'s label, or "rejected"; null before review.')
    human_label_at: str | None
    effective_label: str | None = Field(description="What every reader uses: a person's label first.")
    width: int | None = Field(None, description="Pixels, as indexed.")
    height: int | None = None
    taken: str | None = Field(None, description="EXIF date taken (RFC 3339), when the photo has one.")
    camera_make: str | None = None
    camera_model: str | None = None


class ReviewPage(BaseModel):
    run: str
    label: str
    total: int = Field(description="Items of this label (of those pending, with pending=true).")
    offset: int
    limit: int
    items: list[ReviewItem]


class ReviewRequest(BaseModel):
    """One decision for one item or a selection."""

    ids: list[str] = Field(min_length=1, max_length=MAX_SELECTION, description="Item ids.")
    action: Literal["accept", "change", "reject", "clear"] = Field(
        description="accept: the zero-shot label (an unsure item's best guess); change: to `label`; "
        "reject: none fits; clear: forget an earlier decision."
    )
    label: str | None = Field(None, max_length=200, description="The new label, for action=change.")


class ReviewResponse(BaseModel):
    updated: int
    items: list[ReviewItem]


@router.get("", response_model=LabelRunsResponse, responses=_errors(400, 404, 409, 503),
            operation_id="list_label_runs", summary="A collection's label runs")
def runs(collection: CollectionPath, engines: EnginesDep) -> LabelRunsResponse:
    found = collection_of(engines, collection).label_runs()
    known = set(LabelRun.model_fields)
    return LabelRunsResponse(runs=[LabelRun(run=name, **{k: v for k, v in run.items() if k in known})
                                   for name, run in sorted(found.items())])


@router.get("/{run}", response_model=LabelCounts, responses=_errors(400, 404, 409, 503),
            operation_id="label_counts", summary="Items per label of a run, people's decisions first")
def counts(collection: CollectionPath, run: RunPath, engines: EnginesDep) -> LabelCounts:
    return LabelCounts(**asdict(collection_of(engines, collection).label_counts(run)))


@router.get("/{run}/items", response_model=ReviewPage, responses=_errors(400, 404, 409, 503),
            operation_id="label_items", summary="The items of one label (or unsure), most confident first")
def items(
    collection: CollectionPath,
    run: RunPath,
    engines: EnginesDep,
    label: Annotated[str, Query(min_length=1, description='The zero-shot label, or "unsure".')],
    pending: Annotated[bool, Query(description="Only items nobody has decided on yet.")] = False,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 48,
) -> ReviewPage:
    page = collection_of(engines, collection).review_items(run, label, pending=pending, offset=offset,
                                                           limit=limit)
    return ReviewPage(**asdict(page))


@router.post("/{run}/review", response_model=ReviewResponse, responses=_errors(400, 404, 409, 422, 503),
             operation_id="review_labels", summary="Accept, change or reject the label of items")
def decide(
    collection: CollectionPath, run: RunPath, body: ReviewRequest, engines: EnginesDep
) -> ReviewResponse:
    done = collection_of(engines, collection).review(run, body.ids, body.action, body.label)
    return ReviewResponse(updated=len(done), items=[ReviewItem(**asdict(item)) for item in done])


class LabelRunRequest(BaseModel):
    """A zero-shot label run over the collection (what `clipsearch label` does)."""

    labels: list[Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]] = Field(
        min_length=1, max_length=MAX_LABELS, description="Class names (each prompt is encoded once a run).")
    run: str = Field("label", min_length=1, max_length=64, description="The run's name (its fields' prefix).")
    top_k: int = Field(3, ge=1, le=100)
    threshold: float = Field(0.0, ge=0.0, le=1.0, description='Best score under this: "unsure".')
    templates: PromptTemplates | None = Field(
        None, description='A built-in prompt-template set, or the templates, each with "{}" where the '
                          "label goes [default: the built-in ensemble].")
    filter: dict[str, Any] | None = Field(None, description="Only the items passing this filter.")
    vector: str | None = Field(None, description="The stored vector to read [default: the active one].")

    model_config = ConfigDict(extra="forbid")

    @field_validator("top_k", "threshold", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:  # JSON true is no number (lax mode would take it as 1)
        if isinstance(value, bool):
            raise ValueError("a number, not a boolean")
        return value


class LabelRunResponse(BaseModel):
    run: str
    labeled: int
    unsure: int
    counts: dict[str, int]
    seconds: float


@router.post("", response_model=LabelRunResponse, responses=_errors(400, 404, 409, 422, 503),
             operation_id="label_run", summary="Label the collection zero-shot from its stored vectors")
def label_run(collection: CollectionPath, body: LabelRunRequest, engines: EnginesDep) -> LabelRunResponse:
    done = collection_of(engines, collection).label(
        body.labels, run=body.run, top_k=body.top_k, threshold=body.threshold, templates=body.templates,
        filter=body.filter, vector=body.vector)
    return LabelRunResponse(**asdict(done))
