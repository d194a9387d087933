"""OpenTelemetry traces, optional: on only when the standard variables ask for them, and then imported on
first use. With none of them set, nothing of OpenTelemetry is imported and every `span` is one shared no-op
context manager (tests/unit/observability/test_tracing.py checks both).

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`; `none` is off), or when
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true` wins.
The SDK reads the rest itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, the exporter's endpoint,
headers and timeouts, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`). The `otlp` exporter needs
`pip install 'patchaas[otel]'` (opentelemetry-exporter-otlp-proto-http); without it traces stay off and a
warning says why.

Spans: one per REST request (its parent the caller's `traceparent` header), per step (a run's first step
has the request that queued it as its parent: the request's `traceparent` is stored with the execution,
column `executions.trace_parent`), per fleet call and per SMTP send.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

log = logging.getLogger(__name__)
_NOOP: AbstractContextManager[Any] = nullcontext()
_state: dict[str, Any] = {"checked": False, "tracer": None}


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the standard OTEL_* variables ask for traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER")
    if exporter is not None:
        return exporter.strip().lower() not in ("", "none")
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    """Traces are on (set up on the first call that finds them wanted)."""
    if not _state["checked"]:
        _state["checked"] = True
        if wanted():
            _state["tracer"] = _setup()
    return _state["tracer"] is not None


def _setup(exporter: Any = None) -> Any:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_* asks for traces but the OpenTelemetry SDK is not installed (%s): traces off", exc)
        return None
    processor: Any
    if exporter is not None:  # tests: an in-memory exporter, every span exported when it ends
        processor = SimpleSpanProcessor(exporter)
    else:
        name = (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")[0].strip().lower()
        if name == "console":
            processor = SimpleSpanProcessor(ConsoleSpanExporter())
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=%s needs opentelemetry-exporter-otlp-proto-http "
                            "(pip install 'patchaas[otel]'): traces off", name)
                return None
            processor = BatchSpanProcessor(OTLPSpanExporter())
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "patchaas"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    if exporter is None:
        trace.set_tracer_provider(provider)
    return provider.get_tracer("patchaas")


def use_exporter(exporter: Any) -> None:
    """Tests: traces on, every span to `exporter` (e.g. the SDK's InMemorySpanExporter)."""
    _state["checked"], _state["tracer"] = True, _setup(exporter)


def reset() -> None:
    """Tests: traces off again (the next `enabled()` reads the environment anew)."""
    _state["checked"], _state["tracer"] = False, None


def span(name: str, attributes: Mapping[str, Any] | None = None, parent: str | None = None,
         kind: str = "internal") -> AbstractContextManager[Any]:
    """A span named `name` around a block (the shared no-op while traces are off). `parent`: a stored
    W3C traceparent to continue (a run's first step continues the request that queued it)."""
    if not (_state["tracer"] is not None or (not _state["checked"] and enabled())):
        return _NOOP
    return _span(name, attributes, parent, kind)


@contextmanager
def _span(name: str, attributes: Mapping[str, Any] | None, parent: str | None, kind: str) -> Iterator[Any]:
    from opentelemetry.trace import SpanKind

    context = extract(parent) if parent else None
    with _state["tracer"].start_as_current_span(name, context=context, kind=getattr(SpanKind, kind.upper()),
                                                attributes=dict(attributes or {})) as current:
        yield current


def extract(traceparent: str | Mapping[str, str] | None) -> Any:
    """The context of a traceparent string (or of a carrier of headers)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent} if isinstance(traceparent, str) else dict(traceparent or {})
    return TraceContextTextMapPropagator().extract(carrier)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span (None while traces are off or outside a span)."""
    if _state["tracer"] is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")
