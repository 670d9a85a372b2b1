"""What a checkpoint records (:class:`CheckpointMetadata` of :class:`SubtaskAck`s of :class:`StateFile`s) and
the file format of ``_metadata``: versioned, authenticated JSON — never code.

The file is one JSON document (canonical form: sorted keys, no spaces, ASCII)::

    {"format": "headwater-checkpoint", "version": 1, "key_id": "<16 hex>",
     "checkpoint": {...every field of CheckpointMetadata...}, "hmac": "<64 hex>"}

``hmac`` is HMAC-SHA256, under the deployment's :class:`~headwater.engine.checkpoints.key.CheckpointKey`, of the
canonical bytes of the document without ``hmac``. Source positions and sink commit tokens are written with
:mod:`headwater.core.plain_data`; pickled non-keyed operator state (``SubtaskAck.values``) as base64.

Invariants:

* :func:`decode_metadata` checks the HMAC before it looks at a single field, and builds objects only from
  plain JSON (registered dataclasses at most): nothing in the file can run code.
* Every state file is recorded with its size and SHA-256, so the authenticated metadata authenticates every
  state table, and every pickled blob inside one, transitively: a state file is used only after its bytes
  matched the recorded digest.
* Any defect — not JSON, another format or version, a field missing or of the wrong type, a bad HMAC, another
  key — is a :class:`MetadataError` saying what is wrong; the storage reports it as a damaged checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast

from headwater.core import plain_data
from headwater.core.plain_data import PlainData
from headwater.engine.checkpoints.key import ENV_KEY, ENV_KEY_FILE, CheckpointKey
from headwater.engine.checkpoints.kinds import CheckpointKind
from headwater.errors import HeadwaterError

T = TypeVar("T")

FORMAT = "headwater-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class StateFile:
    step_id: str
    state_name: str
    path: str  # relative to the storage root (a final snapshot written once is referenced by later checkpoints)
    size: int
    sha256: str  # SHA-256 of the file's bytes, hex
    key_group_range: tuple[int, int]  # [start, stop) owned by the subtask that wrote it


@dataclass
class SubtaskAck:
    """Everything one subtask contributes to checkpoint ``checkpoint_id``.

    ``source_positions`` maps source step → partition → position to resume *after*; ``values`` holds pickled
    non-keyed operator state; ``sink_tokens`` maps sink step → list of ``(checkpoint_id, token)`` prepared but
    not yet known to be committed. ``finished`` marks the final snapshot of a subtask whose input ended.
    Positions and tokens must be plain data (:mod:`headwater.core.plain_data`).
    """

    checkpoint_id: int
    stage_id: int
    subtask: int
    parallelism: int
    source_positions: dict[str, dict[str, PlainData]] = field(default_factory=dict)
    state_files: list[StateFile] = field(default_factory=list)
    values: dict[str, dict[str, bytes]] = field(default_factory=dict)
    sink_tokens: dict[str, list[tuple[int, PlainData]]] = field(default_factory=dict)
    finished: bool = False
    drained: bool = False  # a final snapshot taken after operators emitted what they held (end of input)
    bytes_written: int = 0
    sync_ms: float = 0.0  # time the subtask stopped processing to copy its state
    async_ms: float = 0.0  # time spent writing it in the background
    #: the subtask's event-time watermark per step of its chain when it snapshotted (absent: none yet)
    watermarks: dict[str, int] = field(default_factory=dict)


@dataclass
class CheckpointMetadata:
    checkpoint_id: int
    flow_name: str
    kind: CheckpointKind  # a plain string ("checkpoint", "final", "savepoint") is turned into the enum
    max_key_groups: int
    created_at: float
    acks: list[SubtaskAck]
    directory: str = ""  # absolute location (set when loaded; not written)

    def __post_init__(self) -> None:
        self.kind = CheckpointKind(self.kind)

    def source_positions(self) -> dict[str, dict[str, PlainData]]:
        merged: dict[str, dict[str, PlainData]] = {}
        for ack in self.acks:
            for step_id, parts in ack.source_positions.items():
                merged.setdefault(step_id, {}).update(parts)
        return merged

    def state_files(self, step_id: str) -> list[StateFile]:
        return [f for ack in self.acks for f in ack.state_files if f.step_id == step_id]

    def steps_with_state(self) -> set[str]:
        steps = {f.step_id for ack in self.acks for f in ack.state_files}
        steps |= {s for ack in self.acks for s, v in ack.values.items() if v}
        steps |= {s for ack in self.acks for s, parts in ack.source_positions.items() if parts}
        return steps

    def sink_tokens(self) -> list[tuple[str, int, int, int, PlainData]]:
        """(sink step, stage, subtask, parallelism, token) for every token this checkpoint covers."""
        out = []
        for ack in self.acks:
            for step_id, tokens in ack.sink_tokens.items():
                for checkpoint_id, token in tokens:
                    if checkpoint_id <= self.checkpoint_id:
                        out.append((step_id, ack.stage_id, ack.subtask, ack.parallelism, token))
        return out

    @property
    def bytes_written(self) -> int:
        return sum(a.bytes_written for a in self.acks)


class MetadataError(HeadwaterError, ValueError):
    """``_metadata`` is not a valid, authentic checkpoint metadata document; the message says what is wrong."""


class NotPlainDataError(HeadwaterError, ValueError):
    """A source position or sink token is not plain data; names the step and the type."""

    def __init__(self, message: str, step_id: str) -> None:
        super().__init__(message)
        self.step_id = step_id


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


# -- encoding -------------------------------------------------------------------------------------------------
def check_plain(ack: SubtaskAck) -> None:
    """Raise :class:`NotPlainDataError` if a position or token of ``ack`` cannot be written (see
    :mod:`headwater.core.plain_data`)."""
    _encode_positions(ack)
    _encode_tokens(ack)


def _encode_positions(ack: SubtaskAck) -> dict[str, Any]:
    out = {}
    for step_id, parts in ack.source_positions.items():
        try:
            out[step_id] = {str(part): plain_data.encode(position, f"partition {part!r}") for part, position in parts.items()}
        except plain_data.PlainDataError as exc:
            raise NotPlainDataError(f"source position: {exc}; a source's snapshot() must return plain data", step_id) from None
    return out


def _encode_tokens(ack: SubtaskAck) -> dict[str, Any]:
    out = {}
    for step_id, tokens in ack.sink_tokens.items():
        try:
            out[step_id] = [[checkpoint_id, plain_data.encode(token, f"token of checkpoint {checkpoint_id}")]
                            for checkpoint_id, token in tokens]
        except plain_data.PlainDataError as exc:
            raise NotPlainDataError(f"sink commit token: {exc}; a sink's prepare() must return plain data", step_id) from None
    return out


def _encode_ack(ack: SubtaskAck) -> dict[str, Any]:
    return {
        "checkpoint_id": ack.checkpoint_id, "stage_id": ack.stage_id, "subtask": ack.subtask,
        "parallelism": ack.parallelism, "source_positions": _encode_positions(ack),
        "state_files": [
            {"step_id": f.step_id, "state_name": f.state_name, "path": f.path, "size": f.size, "sha256": f.sha256,
             "key_group_range": list(f.key_group_range)}
            for f in ack.state_files
        ],
        "values": {step: {name: base64.b64encode(blob).decode("ascii") for name, blob in blobs.items()}
                   for step, blobs in ack.values.items()},
        "sink_tokens": _encode_tokens(ack), "finished": ack.finished, "drained": ack.drained,
        "bytes_written": ack.bytes_written, "sync_ms": float(ack.sync_ms), "async_ms": float(ack.async_ms),
        "watermarks": dict(ack.watermarks),
    }


def encode_metadata(metadata: CheckpointMetadata, key: CheckpointKey) -> bytes:
    """The bytes of ``_metadata`` for ``metadata``, signed with ``key``."""
    document: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "key_id": key.key_id,
        "checkpoint": {
            "checkpoint_id": metadata.checkpoint_id, "flow_name": metadata.flow_name, "kind": metadata.kind.value,
            "max_key_groups": metadata.max_key_groups, "created_at": float(metadata.created_at),
            "acks": [_encode_ack(a) for a in metadata.acks],
        },
    }
    document["hmac"] = key.sign(canonical(document))
    return canonical(document) + b"\n"


# -- decoding -------------------------------------------------------------------------------------------------
def decode_metadata(data: bytes, key: CheckpointKey) -> CheckpointMetadata:
    """Parse and authenticate ``_metadata`` bytes; raises :class:`MetadataError` saying what is wrong."""
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(f"it is not a JSON document ({_short(exc)}); was it written by another program or "
                            "by a Headwater release before checkpoint format 1?") from None
    if type(document) is not dict:
        raise MetadataError(f"it holds a JSON {type(document).__name__}, not a checkpoint metadata object")
    if document.get("format") != FORMAT:
        raise MetadataError(f"its format is {_short(document.get('format'))}, expected {FORMAT!r}")
    if document.get("version") != VERSION:
        raise MetadataError(f"it has format version {_short(document.get('version'))}; this Headwater reads "
                            f"version {VERSION}")
    signature = document.pop("hmac", None)
    if type(signature) is not str:
        raise MetadataError("it carries no HMAC")
    if not key.verify(canonical(document), signature):
        written_with = document.get("key_id")
        if isinstance(written_with, str) and written_with != key.key_id:
            raise MetadataError(
                f"it was written with another checkpoint key (key id {_short(written_with)}; this deployment's key "
                f"id is {key.key_id}, from {key.source}); to restore it, set ${ENV_KEY} (or ${ENV_KEY_FILE}) to "
                "the key of the deployment that wrote it"
            )
        raise MetadataError("its HMAC does not match its contents: the file was altered after it was written")
    body = _get(document, "checkpoint", dict, "")
    return _decode_body(body)


def _decode_body(body: dict[str, Any]) -> CheckpointMetadata:
    acks = [_decode_ack(a, f"checkpoint.acks[{i}]") for i, a in enumerate(_get(body, "acks", list, "checkpoint"))]
    written = _get(body, "kind", str, "checkpoint")
    try:
        kind = CheckpointKind(written)
    except ValueError:
        expected = ", ".join(k.value for k in CheckpointKind)
        raise MetadataError(f"checkpoint.kind is {_short(written)}, expected one of {expected}") from None
    return CheckpointMetadata(
        checkpoint_id=_get(body, "checkpoint_id", int, "checkpoint"), flow_name=_get(body, "flow_name", str, "checkpoint"),
        kind=kind, max_key_groups=_get(body, "max_key_groups", int, "checkpoint"),
        created_at=_get(body, "created_at", float, "checkpoint"), acks=acks,
    )


def _decode_ack(data: Any, where: str) -> SubtaskAck:
    if type(data) is not dict:
        raise MetadataError(f"{where} is a {type(data).__name__}, expected an object")
    positions = {step: {part: _plain(p, f"{where}.source_positions.{step}.{part}") for part, p in parts.items()}
                 for step, parts in _typed_map(_get(data, "source_positions", dict, where), dict, f"{where}.source_positions").items()}
    values = {step: {name: _base64(b, f"{where}.values.{step}.{name}")
                     for name, b in _typed_map(blobs, str, f"{where}.values.{step}").items()}
              for step, blobs in _typed_map(_get(data, "values", dict, where), dict, f"{where}.values").items()}
    tokens: dict[str, list[tuple[int, PlainData]]] = {}
    for step, entries in _typed_map(_get(data, "sink_tokens", dict, where), list, f"{where}.sink_tokens").items():
        tokens[step] = []
        for i, entry in enumerate(entries):
            at = f"{where}.sink_tokens.{step}[{i}]"
            if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not int:
                raise MetadataError(f"{at} must be a [checkpoint id, token] pair")
            tokens[step].append((entry[0], _plain(entry[1], at)))
    files = [_decode_state_file(f, f"{where}.state_files[{i}]") for i, f in enumerate(_get(data, "state_files", list, where))]
    return SubtaskAck(
        checkpoint_id=_get(data, "checkpoint_id", int, where), stage_id=_get(data, "stage_id", int, where),
        subtask=_get(data, "subtask", int, where), parallelism=_get(data, "parallelism", int, where),
        source_positions=positions, state_files=files, values=values, sink_tokens=tokens,
        finished=_get(data, "finished", bool, where), drained=_get(data, "drained", bool, where),
        bytes_written=_get(data, "bytes_written", int, where), sync_ms=_get(data, "sync_ms", float, where),
        async_ms=_get(data, "async_ms", float, where),
        watermarks=_typed_map(_get(data, "watermarks", dict, where), int, f"{where}.watermarks"),
    )


def _decode_state_file(data: Any, where: str) -> StateFile:
    if type(data) is not dict:
        raise MetadataError(f"{where} is a {type(data).__name__}, expected an object")
    groups = _get(data, "key_group_range", list, where)
    if len(groups) != 2 or any(type(g) is not int for g in groups):
        raise MetadataError(f"{where}.key_group_range must be [start, stop] integers")
    path = _get(data, "path", str, where)
    if path.startswith("/") or ".." in path.split("/") or "://" in path:
        raise MetadataError(f"{where}.path {_short(path)} leaves the checkpoint directory")
    digest = _get(data, "sha256", str, where)
    if len(digest) != 64:
        raise MetadataError(f"{where}.sha256 is not a SHA-256 hex digest")
    return StateFile(_get(data, "step_id", str, where), _get(data, "state_name", str, where), path,
                     _get(data, "size", int, where), digest, (groups[0], groups[1]))


def _get(data: dict[str, Any], name: str, klass: type[T], where: str) -> T:
    place = f"{where}.{name}" if where else name
    if name not in data:
        raise MetadataError(f"field {place} is missing")
    value = data[name]
    if klass is float and type(value) is int:
        return cast(T, float(value))
    if type(value) is not klass:
        raise MetadataError(f"field {place} is a {type(value).__name__}, expected {klass.__name__}")
    return value


def _typed_map(data: Any, klass: type[T], where: str) -> dict[str, T]:
    if type(data) is not dict:
        raise MetadataError(f"field {where} is a {type(data).__name__}, expected an object")
    for name, value in data.items():
        if type(value) is not klass:
            raise MetadataError(f"field {where}.{name} is a {type(value).__name__}, expected {klass.__name__}")
    return data


def _plain(data: Any, where: str) -> PlainData:
    try:
        return plain_data.decode(data)
    except plain_data.PlainDataError as exc:
        raise MetadataError(f"{where}: {exc}") from None


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MetadataError(f"{where} is not base64") from None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."

