"""The examples' console exporter: the SDK's OpenTelemetry spans printed one line each.

``SIGNUP_OTEL=console`` (the signup service) or ``WORKER_OTEL=console`` (the
onboarding worker) turns it on; it needs ``opentelemetry-sdk``. Each span is
printed as it ends: trace, span and parent ids (shortened), duration, name and
attributes, then its events and links, indented.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["console_telemetry"]


def console_telemetry(variable: str) -> dict[str, Any]:
    """``AsyncClient`` options printing its spans to stdout when ``variable`` is ``console``, else none."""
    if os.environ.get(variable) != "console":
        return {}
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    def short(span_id: int) -> str:
        return f"{span_id:016x}"[-6:]

    def one_line(span: ReadableSpan) -> str:
        parent = short(span.parent.span_id) if span.parent else "root  "
        millis = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        lines = [
            f"trace {span.context.trace_id:032x}"[:14]
            + f" span {short(span.context.span_id)} parent {parent} {millis:6.1f} ms"
            + f" {span.name} {dict(span.attributes or {})}"
        ]
        lines += [f"    event {event.name} {dict(event.attributes or {})}" for event in span.events]
        lines += [f"    link to span {short(link.context.span_id)}" for link in span.links]
        return "\n".join(lines) + "\n"

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
    return {"tracer_provider": provider}
