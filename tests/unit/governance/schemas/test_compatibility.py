"""The compatibility matrix: every mode against every kind of change, through the registry itself, plus the
widening rules and the JSON codec the registry stores schemas with."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from headwater.errors import SchemaCompatibilityError, SchemaRegistryError
from headwater.governance.schemas import Compatibility, SchemaRegistry, check_compatible, widens
from headwater.governance.schemas.codec import fingerprint, schema_from_json, schema_to_json

BASE = pa.schema([
    pa.field("a", pa.int32()),                      # nullable
    pa.field("b", pa.string(), nullable=False),     # required
    pa.field("c", pa.float32()),                    # nullable
])


def _replace(name: str, field: pa.Field) -> pa.Schema:
    return BASE.set(BASE.get_field_index(name), field)


# change kind -> (new schema, {mode: the field and words the message names, or None when compatible})
CHANGES: dict[str, tuple[pa.Schema, dict[str, tuple[str, str] | None]]] = {
    "add_nullable": (BASE.append(pa.field("d", pa.int64())),
                     {"backward": None, "forward": None, "full": None}),
    "add_required": (BASE.append(pa.field("d", pa.int64(), nullable=False)),
                     {"backward": ("d", "added as required"), "forward": None, "full": ("d", "added as required")}),
    "remove_nullable": (BASE.remove(2), {"backward": None, "forward": None, "full": None}),
    "remove_required": (BASE.remove(1),
                        {"backward": None, "forward": ("b", "removed, but it was required"),
                         "full": ("b", "removed, but it was required")}),
    "widen_int": (_replace("a", pa.field("a", pa.int64())),
                  {"backward": None, "forward": ("a", "type changed int32 → int64"),
                   "full": ("a", "type changed int32 → int64")}),
    "widen_float": (_replace("c", pa.field("c", pa.float64())),
                    {"backward": None, "forward": ("c", "type changed float32 → float64"),
                     "full": ("c", "type changed float32 → float64")}),
    "narrow": (_replace("a", pa.field("a", pa.int16())),
               {"backward": ("a", "type changed int32 → int16"), "forward": None,
                "full": ("a", "type changed int32 → int16")}),
    "change_type": (_replace("a", pa.field("a", pa.string())),
                    {"backward": ("a", "type changed int32 → string"), "forward": ("a", "type changed int32 → string"),
                     "full": ("a", "type changed int32 → string")}),
    "rename_nullable": (_replace("c", pa.field("c2", pa.float32())),
                        {"backward": None, "forward": None, "full": None}),
    "rename_required": (_replace("b", pa.field("b2", pa.string(), nullable=False)),
                        {"backward": ("b2", "added as required"), "forward": ("b", "removed, but it was required"),
                         "full": ("b2", "added as required")}),
    "nullable_to_required": (_replace("a", pa.field("a", pa.int32(), nullable=False)),
                             {"backward": ("a", "nullable → required"), "forward": None,
                              "full": ("a", "nullable → required")}),
    "required_to_nullable": (_replace("b", pa.field("b", pa.string())),
                             {"backward": None, "forward": ("b", "required → nullable"),
                              "full": ("b", "required → nullable")}),
    "reorder": (pa.schema([BASE.field(2), BASE.field(0), BASE.field(1)]),
                {"backward": None, "forward": None, "full": None}),
}


@pytest.mark.parametrize("mode", ["backward", "forward", "full", "none"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_compatibility_matrix(tmp_path: Path, mode: str, change: str) -> None:
    new, expected = CHANGES[change]
    registry = SchemaRegistry(str(tmp_path / "registry.db"))
    registry.set_mode("stream:f.s", mode)
    assert registry.register("stream:f.s", BASE) == 1
    outcome = None if mode == "none" else expected[mode]
    if outcome is None:
        assert registry.check("stream:f.s", new) == []
        assert registry.register("stream:f.s", new) == 2
        assert registry.get("stream:f.s").schema == new
        return
    field, words = outcome
    with pytest.raises(SchemaCompatibilityError) as caught:
        registry.register("stream:f.s", new)
    message = str(caught.value)
    assert "subject 'stream:f.s'" in message and f"({mode} compatibility)" in message
    assert f"field {field!r}: {words}" in message, message
    assert "Fix:" in message and "headwater schemas mode stream:f.s none" in message
    assert [v.version for v in registry.versions("stream:f.s")] == [1]  # nothing was written


def test_full_reports_both_directions_of_a_rename() -> None:
    new = CHANGES["rename_required"][0]
    problems = check_compatible(BASE, new, Compatibility.FULL)
    assert {(p.field, p.direction) for p in problems} == {("b2", "backward"), ("b", "forward")}


@pytest.mark.parametrize(("old", "new"), [
    (pa.int8(), pa.int16()), (pa.int16(), pa.int64()), (pa.int32(), pa.int64()), (pa.uint8(), pa.uint32()),
    (pa.uint8(), pa.int16()), (pa.uint32(), pa.int64()), (pa.float16(), pa.float32()), (pa.float32(), pa.float64()),
    (pa.int32(), pa.float64()), (pa.uint16(), pa.float64()), (pa.string(), pa.large_string()),
    (pa.binary(), pa.large_binary()), (pa.list_(pa.int32()), pa.large_list(pa.int32())),
])
def test_widenings(old: pa.DataType, new: pa.DataType) -> None:
    assert widens(old, new)
    assert not widens(new, old)


@pytest.mark.parametrize(("old", "new"), [
    (pa.int64(), pa.float64()),       # loses precision above 2**53
    (pa.uint32(), pa.int32()),        # not strictly wider
    (pa.int32(), pa.uint64()),        # negative values
    (pa.int64(), pa.int64()),         # the same type is not a widening
    (pa.timestamp("ms"), pa.timestamp("us")),
    (pa.timestamp("ms"), pa.timestamp("ms", "UTC")),
    (pa.int32(), pa.string()),
    (pa.list_(pa.int32()), pa.list_(pa.int64())),  # nested types compare as a whole
])
def test_not_widenings(old: pa.DataType, new: pa.DataType) -> None:
    assert not widens(old, new)


ROUND_TRIP = pa.schema([
    pa.field("id", pa.int64(), nullable=False), pa.field("flag", pa.bool_()), pa.field("n", pa.null()),
    pa.field("at", pa.timestamp("ms", "UTC")), pa.field("day", pa.date32()), pa.field("t", pa.time64("us")),
    pa.field("d", pa.duration("s")), pa.field("price", pa.decimal128(12, 2)), pa.field("h", pa.binary(16)),
    pa.field("tags", pa.list_(pa.field("tag", pa.string(), nullable=False))),
    pa.field("vec", pa.list_(pa.float32(), 4)), pa.field("big", pa.large_list(pa.int8())),
    pa.field("addr", pa.struct([pa.field("city", pa.string()), pa.field("zip", pa.int32(), nullable=False)])),
    pa.field("attrs", pa.map_(pa.string(), pa.int64())), pa.field("cat", pa.dictionary(pa.int32(), pa.string())),
    pa.field("text", pa.large_string()),
])


def test_the_codec_round_trips_every_supported_type() -> None:
    assert schema_from_json(schema_to_json(ROUND_TRIP)) == ROUND_TRIP
    assert schema_from_json(schema_to_json(ROUND_TRIP)).equals(ROUND_TRIP, check_metadata=True)


def test_fingerprints_ignore_metadata_but_not_nullability_or_order() -> None:
    with_meta = BASE.with_metadata({"pandas": "{}"})
    assert fingerprint(with_meta) == fingerprint(BASE)
    assert fingerprint(_replace("a", pa.field("a", pa.int32(), nullable=False))) != fingerprint(BASE)
    assert fingerprint(CHANGES["reorder"][0]) != fingerprint(BASE)


def test_an_unsupported_type_is_refused_naming_it() -> None:
    with pytest.raises(SchemaRegistryError, match="cannot store Arrow type"):
        schema_to_json(pa.schema([pa.field("u", pa.dense_union([pa.field("x", pa.int8())]))]))


@pytest.mark.parametrize("text", ["not json", '{"fields": [{"name": "x"}]}', '{"fields": [{"name": "x", '
                                  '"nullable": true, "type": "qubit"}]}'])
def test_a_damaged_stored_schema_is_a_registry_error(text: str) -> None:
    with pytest.raises(SchemaRegistryError):
        schema_from_json(text)


def test_an_unknown_mode_names_the_choices(tmp_path: Path) -> None:
    from headwater.errors import ConfigError

    with pytest.raises(ConfigError, match="backward, forward, full, none"):
        SchemaRegistry(str(tmp_path / "r.db")).set_mode("x", "sideways")


ROW = pa.struct([pa.field("id", pa.int32(), nullable=False), pa.field("v", pa.string())])


def _cdc(row: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field("op", pa.string(), nullable=False), pa.field("before", row), pa.field("after", row)])


def test_a_struct_gaining_a_nullable_field_is_backward_compatible_as_a_cdc_table_gaining_a_column() -> None:
    grown = pa.struct([*ROW, pa.field("score", pa.int32())])
    assert check_compatible(_cdc(ROW), _cdc(grown), Compatibility.BACKWARD) == []
    forward = check_compatible(_cdc(grown), _cdc(ROW), Compatibility.FORWARD)
    assert forward == []  # old readers ignore the new field: forward allows removing a nullable one too


@pytest.mark.parametrize("inner, path, change", [
    (pa.field("score", pa.int32(), nullable=False), "before.score", "added as required"),
    (pa.field("v", pa.int64()), "before.v", "type changed string → int64"),
])
def test_nested_fields_follow_the_same_rules_and_are_named_by_their_path(inner: pa.Field, path: str,
                                                                         change: str) -> None:
    fields = [f for f in ROW if f.name != inner.name] + [inner]
    problems = check_compatible(_cdc(ROW), _cdc(pa.struct(fields)), Compatibility.BACKWARD)
    assert {p.field for p in problems} == {path, path.replace("before", "after")}
    assert all(change in p.change for p in problems)


def test_list_items_are_checked_inside() -> None:
    old = pa.schema([pa.field("rows", pa.list_(ROW))])
    grown = pa.schema([pa.field("rows", pa.large_list(pa.struct([*ROW, pa.field("extra", pa.float64())])))])
    assert check_compatible(old, grown, Compatibility.BACKWARD) == []
    narrowed = pa.schema([pa.field("rows", pa.list_(pa.struct([pa.field("id", pa.int16(), nullable=False)])))])
    problems = check_compatible(old, narrowed, Compatibility.BACKWARD)
    assert [(p.field, p.change) for p in problems] == [("rows[].id", "type changed int32 → int16")]
