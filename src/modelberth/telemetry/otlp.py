"""Finished spans to OTLP/protobuf bytes, written straight in the wire format.

The SDK's encoder builds a protobuf object per span, attribute and value and hashes each
span's Resource through json.dumps: ~78 us per span, on the proxy's core. This writes the
same bytes (tests/test_otlp.py parses both and compares) in a fraction of that; the OTLP/HTTP
exporter below uses it. OTLP/gRPC keeps the SDK's encoder (its stub wants message objects)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status
from opentelemetry.trace.span import TraceState

if TYPE_CHECKING:
    from modelberth.telemetry.tracing import RawSpan

_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _TAGS[field << 3 | wire]


def _len(field: int, data: bytes) -> bytes:
    size = len(data)
    return _TAGS[field << 3 | _LEN] + (_BYTE[size] if size < 0x80 else _varint(size)) + data


_TAGS = [_varint(key) for key in range(17 << 3)]
_BYTE = [bytes((value,)) for value in range(0x80)]
# Most attributes repeat from span to span (operation, method, path, model, status, token
# counts): each key with its text, boolean or integer value is encoded once. Floats vary.
_PAIRS: dict[tuple[int, str, type, Any], bytes] = {}
_MAX_PAIRS = 16384


def _text(field: int, value: str | None) -> bytes:
    return _len(field, value.encode()) if value else b""


def _count(field: int, value: int) -> bytes:
    return _tag(field, _VARINT) + _varint(value) if value else b""


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return _len(1, value.encode())
    if isinstance(value, bool):
        return _tag(2, _VARINT) + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _tag(3, _VARINT) + _varint(value)
    if isinstance(value, float):
        return _tag(4, _I64) + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _len(7, value)
    if isinstance(value, Sequence):
        return _len(5, b"".join(_len(1, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _len(6, _attributes(1, value))
    raise TypeError(f"cannot encode a {type(value).__name__} attribute")


def _attributes(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    parts: list[bytes] = []
    append, memo = parts.append, _PAIRS.get
    for key, value in attributes.items():
        kind = value.__class__
        if kind is str or kind is int or kind is bool:
            pair = (field, key, kind, value)
            encoded = memo(pair)
            if encoded is None:
                encoded = _pair(field, key, value)
                if len(_PAIRS) >= _MAX_PAIRS:
                    _PAIRS.clear()
                _PAIRS[pair] = encoded
        else:
            encoded = _pair(field, key, value)
        append(encoded)
    return b"".join(parts)


def _pair(field: int, key: str, value: Any) -> bytes:
    return _len(field, _len(1, key.encode()) + _len(2, _any_value(value)))


def _flags(field: int, parent: SpanContext | None) -> bytes:
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    return _tag(field, _I32) + _FIXED32.pack(flags)


def _event(event: Event) -> bytes:
    return (_tag(1, _I64) + _FIXED64.pack(event.timestamp) + _text(2, event.name)
            + _attributes(3, event.attributes) + _count(4, event.dropped_attributes))


def _link(link: Link) -> bytes:
    context = link.context
    return (_len(1, context.trace_id.to_bytes(16, "big"))
            + _len(2, context.span_id.to_bytes(8, "big"))
            + _attributes(4, link.attributes) + _count(5, link.dropped_attributes)
            + _flags(6, context))


def _span(span: ReadableSpan) -> bytes:
    """An SDK span: the fields a handed-over span has, then events, links and drop counts."""
    context = span.get_span_context()
    assert context is not None
    raw: RawSpan = (span.name, context.trace_id, context.span_id, span.parent,
                    context.trace_flags, context.trace_state, span.kind, span.start_time or 0,
                    span.end_time or 0, span.attributes or {}, span.status)
    return b"".join((
        _raw_span(raw),
        _count(10, span.dropped_attributes),
        b"".join(_len(11, _event(event)) for event in span.events),
        _count(12, span.dropped_events),
        b"".join(_len(13, _link(link)) for link in span.links),
        _count(14, span.dropped_links),
    ))


def _raw_span(raw: RawSpan) -> bytes:
    """A Span message from the values the event loop handed over (fields may come in any
    order on the wire: `_span` appends the ones only SDK spans have)."""
    name, trace_id, span_id, parent, _, state, kind, start, end, attributes, status = raw
    return _span_message(name, trace_id, span_id, parent, state, kind, start, end,
                         _attributes(9, attributes), status)


def encode_attributes(attributes: Mapping[str, Any]) -> bytes:
    """A span's attributes as they sit in its Span message, for `encode_span`; blocks of
    them may be joined."""
    return _attributes(9, attributes)


def encode_float_attribute(key: str, value: float) -> bytes:
    """`encode_attributes({key: value})` for a float, without the dict and the type tests."""
    prefix = _FLOAT_KEYS.get(key)
    if prefix is None:
        if len(_FLOAT_KEYS) >= _MAX_PAIRS:
            _FLOAT_KEYS.clear()
        prefix = _FLOAT_KEYS[key] = _len(1, key.encode()) + _FLOAT_VALUE
    return _len(9, prefix + _DOUBLE.pack(value))


def encode_span(name: str, trace_id: int, span_id: int, parent: SpanContext | int | None,
                state: TraceState | None, kind: SpanKind, start: int, end: int,
                attributes: bytes, status: Status | None) -> bytes:
    """`encode_raw_span` for a span whose attributes are encoded already."""
    return _len(2, _span_message(name, trace_id, span_id, parent, state, kind, start, end,
                                 attributes, status))


def _span_message(name: str, trace_id: int, span_id: int, parent: SpanContext | int | None,
                  state: TraceState | None, kind: SpanKind, start: int, end: int,
                  attributes: bytes, status: Status | None) -> bytes:
    if isinstance(parent, int):
        parent_id, remote = parent, False
    elif parent is not None:
        parent_id, remote = parent.span_id, parent.is_remote
    else:
        parent_id, remote = 0, False
    named = _NAMES.get(name)
    if named is None:
        if len(_NAMES) >= _MAX_PAIRS:
            _NAMES.clear()
        named = _NAMES[name] = _text(5, name)
    return b"".join((
        _TRACE_ID, trace_id.to_bytes(16, "big"), _SPAN_ID, span_id.to_bytes(8, "big"),
        _text(3, ",".join(f"{k}={v}" for k, v in state.items())) if state else b"",
        _PARENT_ID + parent_id.to_bytes(8, "big") if parent is not None else b"",
        named, _KINDS[kind.value], _TIMES.pack(_TAG_START, start, _TAG_END, end),
        attributes,
        _NO_STATUS if status is None else
        _len(15, _text(2, status.description) + _count(3, status.status_code.value)),
        _SPAN_FLAGS[remote],
    ))


# The fixed parts of a Span message, written once: ids' tags with their lengths, the kinds,
# start and end as two fixed64 fields, an empty status, the two values of the flags.
_TRACE_ID = _tag(1, _LEN) + b"\x10"
_SPAN_ID = _tag(2, _LEN) + b"\x08"
_PARENT_ID = _tag(4, _LEN) + b"\x08"
_KINDS = [_count(6, value + 1) for value in range(5)]  # SpanKind.value + 1 on the wire
_TAG_START, _TAG_END = _tag(7, _I64)[0], _tag(8, _I64)[0]
_TIMES = struct.Struct("<BQBQ")
_NO_STATUS = _len(15, b"")
_SPAN_FLAGS = {remote: _tag(16, _I32) + _FIXED32.pack(_HAS_IS_REMOTE | (_IS_REMOTE * remote))
               for remote in (False, True)}
_FLOAT_VALUE = _tag(2, _LEN) + b"\x09" + _tag(4, _I64)  # an AnyValue's 8-byte double follows
_FLOAT_KEYS: dict[str, bytes] = {}
_NAMES: dict[str, bytes] = {}  # span names repeat ("chat m", "POST /v1/chat/completions")


def encode_spans(spans: Iterable[ReadableSpan]) -> bytes:
    """An ExportTraceServiceRequest: spans grouped by resource, then by scope."""
    grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        by_scope = grouped.setdefault(id(resource), (resource, {}))[1]
        by_scope.setdefault(id(scope), (scope, []))[1].append(_len(2, _span(span)))
    return b"".join(_resource_spans(resource, list(by_scope.values()))
                    for resource, by_scope in grouped.values())


def encode_raw_span(raw: RawSpan) -> bytes:
    """One span of an ExportTraceServiceRequest (`encode_request` puts them together)."""
    return _len(2, _raw_span(raw))


def encode_request(encoded: list[bytes], resource: Resource,
                   scope: InstrumentationScope) -> bytes:
    """An ExportTraceServiceRequest of spans encoded one by one, sharing a resource and
    scope; b"" for none."""
    return _resource_spans(resource, [(scope, encoded)]) if encoded else b""


def _resource_spans(resource: Resource,
                    by_scope: Sequence[tuple[InstrumentationScope | None, list[bytes]]]) -> bytes:
    scopes = []
    for scope, encoded in by_scope:
        head = b""
        if scope is not None:
            head = _len(1, _text(1, scope.name) + _text(2, scope.version)
                        + _attributes(3, scope.attributes))
        scopes.append(_len(2, head + b"".join(encoded)
                           + _text(3, scope.schema_url if scope else None)))
    body = _len(1, _attributes(1, resource.attributes)) + b"".join(scopes)
    return _len(1, body + _text(3, resource.schema_url))


class OtlpHttpSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter (endpoint, headers, compression, retries from the
    standard variables) with the encoding above. Falls back to the SDK's own export if its
    internal HTTP client is not where this version of the SDK keeps it."""

    @property
    def sends_encoded(self) -> bool:
        """Whether `send_encoded` can be used with this version of the SDK."""
        return hasattr(getattr(self, "_client", None), "export")

    def send_encoded(self, data: bytes) -> SpanExportResult:
        """Send an ExportTraceServiceRequest already encoded (see `encode_request`)."""
        if getattr(self, "_shutdown", False):
            return SpanExportResult.FAILURE
        result = self._client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.sends_encoded:
            return super().export(spans)
        return self.send_encoded(encode_spans(spans))
