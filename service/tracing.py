"""Traces: OpenTelemetry, off unless the standard OTEL_* variables turn it on.

``configure_tracing`` (once per server process) turns tracing on when
``OTEL_TRACES_EXPORTER`` names ``otlp`` or ``console``, or an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and off with
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. Everything else comes from the
standard variables, read by OpenTelemetry's SDK: the endpoint, headers and timeout of the
OTLP/HTTP exporter, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the sampler
(``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``), the batch processor's queue. A
configuration the SDK refuses logs one warning and the service serves untraced.

What a request's trace holds (``span``, ``record``): the request (FastAPI's own server span,
set up in ``service.app``: the W3C ``traceparent``/``tracestate`` it came with honoured; its
trace id returned in ``X-Trace-ID`` and in every log line of the request), reading its
body, decoding and preprocessing each image, the wait in the batch queue, post-processing.
The batch inference is a span of its own (one batch serves many requests): it links to
every request it served, and each request's span links to it. ``/health/*`` and
``/metrics`` are not traced.

With tracing off every helper here is one boolean test, and for a request the sampler left
out one more: nothing is created or recorded, and no trace id is returned or logged (there
is no trace to look up).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode

__all__ = [
    "Context",
    "annotate",
    "attached",
    "batch_span",
    "configure_tracing",
    "current_context",
    "enabled",
    "failed",
    "in_context",
    "link",
    "record",
    "span",
    "trace_id",
    "trace_ids",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
Context = otel_context.Context
_state: dict[str, Any] = {"enabled": False, "tracer": None}


def enabled() -> bool:
    return bool(_state["enabled"])


def _recording(context: Context | None = None) -> bool:
    """Whether the span current in ``context`` (default: now) is sampled and recorded: an
    unsampled request costs nothing more than its first, unrecorded span."""
    return bool(_state["enabled"]) and trace.get_current_span(context).is_recording()


def _wanted(environ: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for (none: tracing off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        exporters = [e.strip() for e in named.split(",") if e.strip()]
        return [] if exporters == ["none"] else exporters
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return ["otlp"] if any(environ.get(name) for name in endpoints) else []


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    """One span exporter; ValueError for what cnnserve does not ship."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: cnnserve exports otlp or console")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise ValueError(
            f"OTLP protocol {protocol!r}: cnnserve exports OTLP over HTTP (http/protobuf, "
            "a collector's port 4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(service_version: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on as the environment asks (module doc); False when it stays off."""
    environ = os.environ if environ is None else environ
    wanted = _wanted(environ)
    if not wanted:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporters = [_exporter(name, environ) for name in wanted]
        resource = Resource.create({"service.version": service_version})  # + OTEL_* ones
        if "OTEL_SERVICE_NAME" not in environ and "service.name=" not in environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        ):
            resource = resource.merge(Resource.create({"service.name": "cnnserve"}))
        provider = TracerProvider(resource=resource)  # the sampler: from OTEL_TRACES_SAMPLER
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    except Exception as exc:  # the SDK's refusals are untyped: one warning, no traces
        log.warning("tracing stays off: the OTEL_* configuration was refused: %s", exc)
        return False
    trace.set_tracer_provider(provider)
    _state["enabled"], _state["tracer"] = True, provider.get_tracer("cnnserve")
    log.info(
        "tracing on: %s exporter, sampler %s",
        ", ".join(wanted),
        provider.sampler.get_description(),
    )
    return True


def _tracer() -> trace.Tracer:
    tracer: trace.Tracer = _state["tracer"]
    return tracer


def _named(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """cnnserve's own attributes, in its namespace (``cnnserve.model``, ``cnnserve.images``)."""
    return {f"cnnserve.{key}": value for key, value in attributes.items()}


def current_context() -> Context | None:
    """The trace context to carry to another thread (None with tracing off, or when the
    request is not sampled)."""
    return otel_context.get_current() if _recording() else None


_NO_SPAN: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def span(
    name: str, parent: Context | None = None, **attributes: Any
) -> contextlib.AbstractContextManager[Span | None]:
    """A child span of ``parent`` (default: the current span), current within the block;
    with tracing off or the request unsampled, a shared context manager that does nothing
    (the request path enters several)."""
    if not _recording(parent):
        return _NO_SPAN
    return _span(name, parent, attributes)


@contextlib.contextmanager
def _span(name: str, parent: Context | None, attributes: dict[str, Any]) -> Iterator[Span]:
    token = otel_context.attach(parent) if parent is not None else None
    try:
        with _tracer().start_as_current_span(name, attributes=_named(attributes)) as child:
            yield child
    finally:
        if token is not None:
            otel_context.detach(token)


def record(
    name: str, parent: Context | None, start_s: float, end_s: float, **attributes: Any
) -> None:
    """A span whose times are already known (``time.perf_counter`` seconds), as a child of
    ``parent``: the wait in a queue, measured by whoever ended it."""
    if parent is None or not _recording(parent):
        return
    offset = time.time_ns() - time.perf_counter_ns()
    started = _tracer().start_span(
        name, context=parent, start_time=int(start_s * 1e9) + offset, attributes=_named(attributes)
    )
    started.end(end_time=int(end_s * 1e9) + offset)


@contextlib.contextmanager
def batch_span(name: str, served: list[Context | None], **attributes: Any) -> Iterator[None]:
    """A span of its own (a new trace) for work done for several requests at once: it links
    to the span each request was in, and each of those links back to it."""
    parents = [trace.get_current_span(ctx) for ctx in served if ctx is not None]
    parents = [p for p in parents if p.is_recording()]
    if not parents:
        yield
        return
    links = [Link(p.get_span_context()) for p in parents]
    with _tracer().start_as_current_span(
        name, context=Context(), links=links, attributes=_named(attributes)
    ) as batch:
        yield
        for parent in parents:
            link(parent, batch.get_span_context(), kind="batch")


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (the request's, say): what it is about."""
    if _recording():
        trace.get_current_span().set_attributes(_named(attributes))


@contextlib.contextmanager
def attached(parent: Context | None) -> Iterator[None]:
    """Run a block in ``parent``'s trace context (work a thread does for a request)."""
    if parent is None:
        yield
        return
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


def in_context(call: Callable[[], T], *, waited: str | None = None) -> Callable[[], T]:
    """``call`` bound to the current trace context, for another thread to run; ``waited``
    names a span for the time between now and when that thread starts it (a pool's queue)."""
    parent = current_context()
    if parent is None:
        return call
    submitted = time.perf_counter()

    def bound() -> T:
        if waited is not None:
            record(waited, parent, submitted, time.perf_counter())
        with attached(parent):
            return call()

    return bound


def link(source: Span, target: SpanContext, **attributes: Any) -> None:
    """Add a link from ``source`` to ``target`` (after ``source`` started)."""
    with contextlib.suppress(Exception):  # a span already ended takes no more links
        source.add_link(target, attributes=attributes)


def failed(current: Span | None, error: BaseException | str) -> None:
    """Mark ``current`` as failed (a 5xx answer, an inference that raised)."""
    if current is not None:
        current.set_status(Status(StatusCode.ERROR, str(error)[:200]))


def trace_id() -> str:
    """The current trace's id, hex ("" outside a traced request): the X-Trace-ID header."""
    ids = trace_ids()
    return ids[0] if ids else ""


def trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, hex, for log lines; None outside one or
    when the request is not sampled (its trace is nowhere to look up)."""
    if not enabled():
        return None
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None  # (a span just ended still names its trace: the access line is written then)
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
