"""What OpenTelemetry costs per call: off, the API with no SDK, and a real SDK, side by side.

Each call is ``client.customers.create`` over the sandbox's in-process
transport (``Sandbox().transport()``): validation, encoding, signing, the
sandbox's own checks and a typed record, no sockets. The figure is this
process's CPU time per call (``time.process_time``: other processes on a busy
machine inflate wall time, not this), the median over many short turns. The
three clients take turns within each repeat (A B C C B A, so drift on the
machine hits all of them), and each ratio is the median of the per-repeat
ratios, so a slow moment compares like with like:

- ``off``: ``telemetry=False`` (what a user without ``opentelemetry-api`` gets:
  the same log observer, nothing of OpenTelemetry imported by it);
- ``api``: ``telemetry=True`` with no SDK configured (the API's no-op
  providers: what an application gets that has the API installed, not set up);
- ``sdk``: a real ``TracerProvider`` with a ``BatchSpanProcessor`` to an
  exporter that drops what it is given, and a ``MeterProvider`` with an
  in-memory reader (every span and metric recorded; exporting itself left out).

Beside that, the observer hooks of one plain create (operation started, attempt
started and ended, operation ended) are timed alone, in a loop of their own:
the cost the feature adds, without the noise of the whole call around it.

Run: ``python -m benchmarks.otel [--calls N] [--repeats R] [--out FILE]``;
it prints a Markdown table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ndax_async.testing import Sandbox

from ._common import customer, machine, median

MODES = ("off", "api", "sdk")


class DropExporter(SpanExporter):
    """Takes batches and drops them (the cost of recording, not of shipping)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def _options(mode: str, exporter: DropExporter) -> dict[str, Any]:
    if mode == "off":
        return {"telemetry": False}
    if mode == "api":
        return {"telemetry": True}
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    return {"tracer_provider": tracer_provider, "meter_provider": MeterProvider([InMemoryMetricReader()])}


async def _calls(sandbox: Sandbox, mode: str, calls: int, tag: str, exporter: DropExporter) -> float:
    """Seconds per call for ``calls`` creates, one after another, on a fresh client."""
    wires = [customer(n, tag) for n in range(calls)]
    options = _options(mode, exporter)
    async with sandbox.client(**options) as client:
        await client.customers.create(customer(0, tag + "-warm"))
        gc.collect()  # the previous turn's garbage is not this turn's cost
        started = time.process_time()
        for wire in wires:
            await client.customers.create(wire)
        elapsed = time.process_time() - started
    if "tracer_provider" in options:
        options["tracer_provider"].shutdown()  # exports what is queued (outside the timing), stops its thread
        options["meter_provider"].shutdown()
    return elapsed / calls


def hooks_alone(mode: str, rounds: int = 20000, repeats: int = 7) -> float:
    """Median CPU seconds of one create's four observer calls, on the observer ``mode`` gets."""
    exporter = DropExporter()
    options = _options(mode, exporter)
    observer = Sandbox().client(**options).observer
    url = "https://api.ndax.in/participants/customers/new"
    times = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(rounds):
            operation = observer.operation_started("POST", "/participants/customers/new", "request-id")
            attempt = observer.attempt_started("POST", url, 0)
            observer.attempt_ended(attempt, status_code=200, error=None)
            observer.operation_ended(operation, attempts=1)
        times.append((time.process_time() - started) / rounds)
    if "tracer_provider" in options:
        options["tracer_provider"].shutdown()
        options["meter_provider"].shutdown()
    return median(times)


async def run(calls: int, repeats: int) -> dict[str, Any]:
    """Median seconds per call of each mode over ``repeats`` rounds."""
    per_call: dict[str, list[float]] = {mode: [] for mode in MODES}
    ratios: dict[str, list[float]] = {mode: [] for mode in MODES}
    exporter = DropExporter()
    for repeat in range(repeats):
        order = MODES + MODES[::-1]
        this: dict[str, float] = dict.fromkeys(MODES, 0.0)
        for turn, mode in enumerate(order):
            sandbox = Sandbox()  # fresh each time: the sandbox keeps every customer
            seconds = await _calls(sandbox, mode, calls // 2, f"r{repeat}t{turn}", exporter)
            this[mode] += seconds / 2
        for mode in MODES:
            per_call[mode].append(this[mode])
            ratios[mode].append(this[mode] / this["off"])
    return {
        "calls_per_turn": calls // 2,
        "repeats": repeats,
        "per_call_us": {mode: median(values) * 1e6 for mode, values in per_call.items()},
        "ratio": {mode: median(values) for mode, values in ratios.items()},
        "ratio_range": {mode: [min(values), max(values)] for mode, values in ratios.items()},
        "hooks_alone_us": {mode: hooks_alone(mode) * 1e6 for mode in MODES},
        "spans_exported": exporter.spans,
        "machine": machine(),
        "python": sys.version.split()[0],
    }


def table(figures: dict[str, Any]) -> str:
    """The figures as Markdown."""
    rows = [
        "| mode | CPU µs per create | against off (median) | per-repeat range | hooks alone, µs |",
        "|---|---:|---:|---|---:|",
    ]
    for mode in MODES:
        low, high = figures["ratio_range"][mode]
        rows.append(
            f"| {mode} | {figures['per_call_us'][mode]:.1f} | {figures['ratio'][mode]:.3f}x"
            f" | {low:.3f}x to {high:.3f}x | {figures['hooks_alone_us'][mode]:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    """Run and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="creates per mode per repeat")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("otel.json"))
    args = parser.parse_args()
    figures = asyncio.run(run(args.calls, args.repeats))
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(table(figures))
    print(f"\n{figures['machine']}, Python {figures['python']}; spans exported {figures['spans_exported']}")


if __name__ == "__main__":
    main()
