"""CollectionSchema: what a collection records about its vectors and fields, and how it may change."""

from __future__ import annotations

import pytest

from indexer.errors import SchemaError, VectorNotFound
from indexer.schema import (
    SCHEMA_VERSION,
    V1_IMAGE_FIELDS,
    CollectionSchema,
    ModelIdentity,
    VectorSpec,
    payload_path,
)
from indexer.stores.base import StoredInfo

B32 = ModelIdentity("ViT-B-32", "laion2b_s34b_b79k", "ViT-B-32", "laion2b_s34b_b79k", 512)
L14 = ModelIdentity("ViT-L-14", "openai", "ViT-L-14", "openai", 768, precision="int8")
BOTH_UNDER_EMPTY_KEY = {"a": VectorSpec("a", B32, key=""), "b": VectorSpec("b", L14, key="")}
V1_INFO = {"model": B32.to_dict(), "failed": {"/p/broken.jpg": {"reason": "cannot identify image file"}}}


def schema(**fields: str) -> CollectionSchema:
    return CollectionSchema.new(B32, fields=fields)  # type: ignore[arg-type]


# --- construction and validation -----------------------------------------------------------------


def test_new_makes_one_active_ready_vector_named_default_at_the_current_version() -> None:
    made = CollectionSchema.new(B32, fields={"price": "float"})

    assert made.version == SCHEMA_VERSION == 2
    assert list(made.vectors) == ["default"] and made.active == "default"
    spec = made.active_vector
    assert (spec.name, spec.model, spec.dim, spec.precision) == ("default", B32, 512, "fp32")
    assert (spec.distance, spec.state, spec.storage_key) == ("cosine", "ready", "default")
    assert made.fields == {"price": "float"}
    assert CollectionSchema.new(L14, vector="clip-l").vector().precision == "int8"


def test_new_copies_the_fields_it_is_given() -> None:
    fields = {"brand": "keyword"}
    made = CollectionSchema.new(B32, fields=fields)  # type: ignore[arg-type]
    fields["price"] = "float"
    assert made.fields == {"brand": "keyword"}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CollectionSchema(vectors={}, active="default"), "at least one vector"),
        (lambda: CollectionSchema({"a": VectorSpec("a", B32)}, "b"), r"active vector 'b' is not one of"),
        (lambda: CollectionSchema({"a": VectorSpec("b", B32)}, "a"), r"'b' is listed under another name"),
        (lambda: CollectionSchema(BOTH_UNDER_EMPTY_KEY, "a"),
         r"two vectors share a storage key"),
        (lambda: CollectionSchema({"a": VectorSpec("a", B32, key="b"), "b": VectorSpec("b", L14)}, "a"),
         r"two vectors share a storage key"),
        (lambda: CollectionSchema.new(B32, vector="1st"), r"invalid vector name '1st'"),
        (lambda: CollectionSchema.new(B32, vector="a b"), r"invalid vector name"),
        (lambda: CollectionSchema.new(B32, vector="x" * 65), r"64 at most"),
        (lambda: schema(**{"bad field": "keyword"}), r"invalid field name 'bad field'"),
        (lambda: schema(price="money"), r"field 'price': unknown type 'money'; use one of keyword, integer"),
    ],
)
def test_invalid_schemas_are_refused_with_a_schema_error(build, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        build()


def test_names_may_use_letters_digits_dot_dash_underscore() -> None:
    made = CollectionSchema.new(B32, vector="clip.ViT-B_32", fields={"a.b-c_1": "text", "x" * 64: "geo"})
    assert made.active == "clip.ViT-B_32"


def test_schema_error_is_bad_input() -> None:
    assert SchemaError("x").kind.value == "bad input"


# --- reading --------------------------------------------------------------------------------------


def test_vector_without_a_name_is_the_active_one_and_an_unknown_name_lists_the_real_ones() -> None:
    two = schema().with_vector(VectorSpec("large", L14))
    assert two.vector().name == "default" and two.vector(None).name == "default"
    assert two.vector("large").model == L14
    with pytest.raises(VectorNotFound, match=r"no vector 'small'.*default, large.*clipsearch vectors"):
        two.vector("small")


def test_field_type_of_an_undeclared_field_lists_the_declared_ones() -> None:
    made = schema(price="float", brand="keyword")
    assert made.field_type("price") == "float"
    with pytest.raises(SchemaError, match=r"field 'colour' is not declared.*\(declared: brand, price\)"):
        made.field_type("colour")
    with pytest.raises(SchemaError, match=r"declared: none"):
        schema().field_type("colour")


def test_payload_path_puts_fields_under_metadata() -> None:
    assert payload_path("price") == "metadata.price"


# --- changes ---------------------------------------------------------------------------------------


def test_with_vector_adds_a_vector_and_leaves_the_original_unchanged() -> None:
    base = schema()
    grown = base.with_vector(VectorSpec("large", L14, state="building"))

    assert list(grown.vectors) == ["default", "large"]
    assert grown.active == "default"  # adding never activates
    assert grown.vector("large").state == "building" and grown.vector("large").dim == 768
    assert list(base.vectors) == ["default"]


def test_with_vector_refuses_a_name_taken_or_invalid() -> None:
    with pytest.raises(SchemaError, match="already has a vector 'default'"):
        schema().with_vector(VectorSpec("default", L14))
    with pytest.raises(SchemaError, match="invalid vector name"):
        schema().with_vector(VectorSpec("no spaces", L14))


def test_with_vector_state_marks_one_vector() -> None:
    grown = schema().with_vector(VectorSpec("large", L14, state="building"))
    assert grown.with_vector_state("large", "ready").vector("large").state == "ready"
    with pytest.raises(VectorNotFound):
        grown.with_vector_state("nope", "ready")


def test_without_vector_drops_an_inactive_vector_only() -> None:
    grown = schema().with_vector(VectorSpec("large", L14))

    assert list(grown.without_vector("large").vectors) == ["default"]
    with pytest.raises(SchemaError, match=r"'default' is the active one; activate another"):
        grown.without_vector("default")
    with pytest.raises(VectorNotFound):
        grown.without_vector("nope")


def test_with_active_switches_to_a_ready_vector_only() -> None:
    building = schema().with_vector(VectorSpec("large", L14, state="building"))
    with pytest.raises(SchemaError, match=r"still being embedded.*clipsearch reembed --vector large"):
        building.with_active("large")
    with pytest.raises(VectorNotFound):
        building.with_active("nope")

    switched = building.with_vector_state("large", "ready").with_active("large")
    assert switched.active == "large" and switched.active_vector.model == L14
    assert list(switched.without_vector("default").vectors) == ["large"]


def test_with_fields_merges_and_keeps_each_fields_type() -> None:
    base = schema(price="float")
    merged = base.with_fields({"price": "float", "brand": "keyword"})

    assert merged.fields == {"price": "float", "brand": "keyword"}
    assert base.fields == {"price": "float"}
    with pytest.raises(SchemaError, match="field 'price' is declared as float, not integer"):
        merged.with_fields({"price": "integer"})
    with pytest.raises(SchemaError, match="unknown type"):
        merged.with_fields({"colour": "colour"})  # type: ignore[dict-item]


# --- storing and reading back ---------------------------------------------------------------------


def test_to_dict_and_from_info_round_trip_every_detail() -> None:
    made = (
        CollectionSchema.new(B32, fields={"price": "float", "when": "datetime", "where": "geo"})
        .with_vector(VectorSpec("large", L14, state="building"))
        .with_vector(VectorSpec("old", B32, key=""))
    )
    document = made.to_dict()

    assert document["version"] == SCHEMA_VERSION and document["active"] == "default"
    assert [v["name"] for v in document["vectors"]] == ["default", "large", "old"]
    large = document["vectors"][1]
    assert large["dim"] == 768 and large["precision"] == "int8" and large["state"] == "building"
    assert "key" not in large and document["vectors"][2]["key"] == ""
    assert CollectionSchema.from_info({"schema": document, "failed": {}}) == made
    assert CollectionSchema.from_info({"schema": document}).vector("old").storage_key == ""


def test_from_info_of_a_collection_never_written_is_none() -> None:
    assert CollectionSchema.from_info({}) is None
    assert CollectionSchema.from_info({"failed": {}}) is None


def test_a_version_1_info_migrates_to_one_default_vector_stored_under_the_empty_key() -> None:
    migrated = CollectionSchema.from_info(V1_INFO)

    assert migrated is not None and migrated.version == SCHEMA_VERSION
    assert list(migrated.vectors) == ["default"] and migrated.active == "default"
    spec = migrated.vector("default")
    assert spec.model == B32 and spec.storage_key == "" and spec.state == "ready"
    assert migrated.fields == V1_IMAGE_FIELDS == {"width": "integer", "height": "integer"}
    assert migrated.to_dict()["vectors"][0]["key"] == ""
    assert CollectionSchema.from_info({"schema": migrated.to_dict()}) == migrated


def test_a_version_1_model_without_precision_reads_as_fp32() -> None:
    old = {k: v for k, v in B32.to_dict().items() if k != "precision"}
    migrated = CollectionSchema.from_info({"model": old})
    assert migrated is not None and migrated.active_vector.precision == "fp32"


def test_a_newer_schema_version_is_refused_with_advice_to_upgrade() -> None:
    document = {**schema().to_dict(), "version": SCHEMA_VERSION + 1}
    with pytest.raises(SchemaError, match=r"version 3 is newer than this clipsearch understands \(2\); upgr"):
        CollectionSchema.from_info({"schema": document})


def test_stored_info_splits_a_version_1_document_and_writes_it_back_as_version_2() -> None:
    stored = StoredInfo.parse(V1_INFO)

    assert stored.legacy and stored.schema == CollectionSchema.from_info(V1_INFO)
    assert stored.info == {"failed": V1_INFO["failed"]}
    document = stored.document()
    assert "model" not in document and document["failed"] == V1_INFO["failed"]
    assert document["schema"]["version"] == SCHEMA_VERSION
    again = StoredInfo.parse(document)
    assert not again.legacy and again.schema == stored.schema and again.info == stored.info


def test_stored_info_of_a_version_2_document_and_of_nothing() -> None:
    current = StoredInfo.parse({"schema": schema(price="float").to_dict(), "failed": {}})
    assert not current.legacy and current.schema == schema(price="float") and current.info == {"failed": {}}
    empty = StoredInfo.parse({})
    assert empty.schema is None and not empty.legacy and empty.document() == {}


# --- model identity -------------------------------------------------------------------------------


def test_model_identity_round_trips_and_compares_what_makes_vectors_comparable() -> None:
    assert ModelIdentity.from_dict(L14.to_dict()) == L14
    moved = ModelIdentity("/elsewhere/cfg.json", "/w.pt", "ViT-B-32", "laion2b_s34b_b79k", 512, "int8")
    assert B32.same_model(moved)  # same architecture, weights and size: the same embedding space
    assert not B32.same_model(L14)
    assert B32.describe() == "ViT-B-32 (laion2b_s34b_b79k, 512-d)"
    assert ModelIdentity("m", "", "tiny", "", 8).describe() == "tiny (random weights, 8-d)"
