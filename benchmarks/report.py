"""Turn the benchmark figures into ``RESULTS.md`` (with each target's verdict) and a PNG plot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import machine, verdict
from .bulk import CONCURRENCY
from .throughput import BASELINE
from .throughput import SDK_DEFAULT as SDK

MODEL_IN = "SDK, NewCustomer in"
DICT_IN = "SDK, dict in (validated per call)"


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, holds) for each target of the performance issue."""
    ratio = results["overhead"]["ratio"]
    tp = results["throughput"]
    vs_aiohttp = {c: v for c, v in tp["ratio"][SDK].items() if c >= 16}
    rows = [
        (
            "per-call overhead <= 1.15x hand-written httpx",
            f"{ratio[MODEL_IN]:.2f}x (model in), {ratio[DICT_IN]:.2f}x (dict in)",
            max(ratio[MODEL_IN], ratio[DICT_IN]) <= 1.15,
        ),
        (
            "SDK default >= 0.8x hand-written aiohttp at concurrency 16, 64, 256",
            ", ".join(f"{c}: {v:.2f}x" for c, v in vs_aiohttp.items()),
            all(v >= 0.8 for v in vs_aiohttp.values()),
        ),
    ]
    scaling = results["scaling"]
    sdk = scaling["clients"][SDK]
    low, high = scaling["low"], scaling["high"]
    rows.append(
        (
            f"SDK default not lower at {high} than at {low}",
            f"{sdk['ratio']:.3f}x ({sdk['high']['rate']:,.0f}/s at {high}, {sdk['low']['rate']:,.0f}/s"
            f" at {low}, back to back; hand-written aiohttp"
            f" {scaling['clients'][BASELINE]['ratio']:.3f}x{_reference_note(results)})",
            sdk["ratio"] >= 1.0,
        )
    )
    bulk = results["bulk"]
    memory = results["memory"]
    gap = bulk["loop_gap_ms"]
    rows += [
        ("bulk with journal >= 0.85x without", f"{bulk['ratio']:.3f}x", bulk["ratio"] >= 0.85),
        (
            f"peak RSS growth {memory['small']:,} -> {memory['large']:,} streamed operations < 20 MiB",
            f"{memory['growth_mib']:.1f} MiB ({memory['small_mib']:.1f} -> {memory['large_mib']:.1f} MiB)",
            memory["growth_mib"] < 20,
        ),
        (
            "event-loop gap < 10 ms (bulk, journal on)",
            f"{gap['median_run_max']:.1f} ms (median of each run's largest gap;"
            f" largest of all {gap['max']:.1f} ms, p99 {gap['p99']:.1f} ms)",
            gap["median_run_max"] < 10,
        ),
    ]
    return rows


def _reference_note(results: dict[str, Any]) -> str:
    reference = results.get("scaling_reference", {})
    clients = reference.get("clients", {})
    if SDK not in clients or BASELINE not in clients:
        return ""
    return (
        f"; against a server that is not the bottleneck (2c): SDK {clients[SDK]['ratio']:.3f}x,"
        f" hand-written aiohttp {clients[BASELINE]['ratio']:.3f}x"
    )


def markdown(results: dict[str, Any], *, smoke: bool) -> str:
    """The whole report."""
    over, tp, bulk = results["overhead"], results["throughput"], results["bulk"]
    lines = [
        "# Benchmark results",
        "",
        "Made by `bash scripts/bench.sh` (`python -m benchmarks`); method: `benchmarks/README.md`.",
        "",
    ]
    if smoke:
        lines += ["**Smoke run (tiny N): these figures check that the harness runs and mean nothing.**", ""]
    lines += [
        f"- Machine: {machine()}",
        f"- Date: {results['date']}",
        f"- Whole run: {results['elapsed']:.0f} s",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {measured} | {verdict(ok)} |" for name, measured, ok in targets(results)]
    lines += [
        "",
        f"## 1. Per-call overhead (in-process instant transport, {over['calls']:,} calls,"
        f" median of {over['repeats']} alternating repeats)",
        "",
        "| client | µs per call | ratio to hand-written httpx |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {value:.1f} | {over['ratio'][name]:.2f}x |"
        for name, value in over["us_per_call"].items()
    ]
    lines += [
        "",
        f"## 2. Throughput over loopback (a fresh sandbox process per cell, {tp['seconds']:g} s per cell,"
        f" median of {tp['repeats']} alternating repeats)",
        "",
        "Creates per second, and this process's CPU time per create (the client's cost alone).",
        "",
    ]
    table = tp["table"]
    lines += _by_concurrency(
        tp, lambda name, c: f"{table[name][c]['rate']:,.0f}/s ({table[name][c]['cpu_ms']:.2f} ms)"
    )
    lines += [
        "",
        "The sandbox's CPU time per create, and how busy it was (its CPU time over the wall time;"
        " near 100% the cell measures the server, not the client):",
        "",
    ]
    lines += _by_concurrency(tp, lambda name, c: _server_cell(table[name][c]))
    lines += [
        "",
        "Ratio of each client to hand-written aiohttp (the median of the ratios within each repeat):",
        "",
    ]
    lines += _by_concurrency(tp, lambda name, c: f"{tp['ratio'][name][c]:.2f}x")
    lines += [
        "",
        "![throughput against concurrency](throughput.png)",
        "",
    ]
    lines += _scaling_section(results["scaling"])
    if "scaling_reference" in results:
        lines += _reference_section(results["scaling_reference"])
    lines += [
        f"## 3. Bulk engine ({bulk['operations']:,} creates, concurrency {CONCURRENCY}, instant transport,"
        f" median of {bulk['repeats']} alternating repeats)",
        "",
        "| journal | operations/s |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value:,.0f} |" for name, value in bulk["ops_per_second"].items()]
    memory = results["memory"]
    lines += [
        "",
        f"Journal on / off: {bulk['ratio']:.3f}x, the median of the ratios within each repeat"
        f" ({', '.join(f'{r:.2f}' for r in sorted(bulk['ratios']))}). The runs have no loop-gap ticker;"
        " the ticked runs of section 4 are the third row.",
        "",
        "Peak RSS of the process and its journal writer process (their peaks added),"
        f" streamed with the journal on: {memory['small']:,} operations"
        f" {memory['small_mib']:.1f} MiB, {memory['large']:,} operations {memory['large_mib']:.1f} MiB"
        f" (growth {memory['growth_mib']:.1f} MiB).",
        "",
        "## 4. Event-loop health",
        "",
        "A ticker asking to run every 1 ms during separate journal-on bulk runs"
        f" ({bulk['loop_gap_ms']['ticks']:,} ticks): in the median run the loop was late by at most"
        f" {bulk['loop_gap_ms']['median_run_max']:.1f} ms; the largest lateness of all runs was"
        f" {bulk['loop_gap_ms']['max']:.1f} ms (p99 {bulk['loop_gap_ms']['p99']:.1f} ms). The longest"
        f" garbage-collector pause in those runs was {bulk['loop_gap_ms']['longest_gc_pause']:.1f} ms.",
        "",
        "The same ticker during journal-off runs"
        f" ({bulk['loop_gap_ms_journal_off']['ticks']:,} ticks): late by at most"
        f" {bulk['loop_gap_ms_journal_off']['median_run_max']:.1f} ms in the median run, by"
        f" {bulk['loop_gap_ms_journal_off']['max']:.1f} ms at most. A run starts at most four"
        " operations that wait for nothing per turn of the loop. Before that limit (f80258a), over"
        " this transport (nothing in an operation waits) the ticker was late by about 14 ms at every"
        " tick of a journal-off run, 19 ms at most.",
        "",
    ]
    return "\n".join(lines)


def _scaling_section(scaling: dict[str, Any]) -> list[str]:
    low, high = scaling["low"], scaling["high"]
    lines = [
        f"## 2b. {high} in flight against {low}, back to back ({scaling['slices']} pairs of"
        f" {scaling['seconds']:g} s slices in the order A B B A, each pair on a fresh sandbox and client,"
        " alternating which is A)",
        "",
        *_scaling_table(scaling, "sandbox"),
        "",
        "Each ratio is the median of the ratios within each pair (each side's two slices averaged)."
        " Where the CPU per create rises with"
        " concurrency, the rate falls by as much: the two processes share two cores.",
        "",
    ]
    return lines


def _reference_section(scaling: dict[str, Any]) -> list[str]:
    low, high = scaling["low"], scaling["high"]
    lines = [
        f"## 2c. The same, against a server that is not the bottleneck ({high} against {low})",
        "",
        "`benchmarks/reference_server.js` (Node.js) answers every request with one fixed create"
        " reply and checks nothing, so it costs far less per request than the sandbox, and the"
        " client's own scaling shows. For comparison only: the target's verdict is section 2b's.",
        "",
    ]
    if "skipped" in scaling:
        return [*lines, f"Skipped: {scaling['skipped']}.", ""]
    return [*lines, *_scaling_table(scaling, "server"), ""]


def _scaling_table(scaling: dict[str, Any], server: str) -> list[str]:
    low, high = scaling["low"], scaling["high"]
    lines = [
        f"| client | c={low} | c={high} | rate {high}/{low} | client CPU per create {high}/{low}"
        f" | {server} CPU per create {high}/{low} | {server} busy at {low}, at {high} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, figure in scaling["clients"].items():
        spread = sorted(figure["ratios"])
        lines.append(
            f"| {name} | {figure['low']['rate']:,.0f}/s | {figure['high']['rate']:,.0f}/s"
            f" | {figure['ratio']:.3f}x ({spread[0]:.2f} to {spread[-1]:.2f})"
            f" | {figure['cpu_ratio']:.2f}x | {figure['server_cpu_ratio']:.2f}x"
            f" | {_percent(figure['low']['server_busy'])}, {_percent(figure['high']['server_busy'])} |"
        )
    return lines


def _server_cell(cell: dict[str, float]) -> str:
    return f"{cell['server_cpu_ms']:.2f} ms, {_percent(cell['server_busy'])}"


def _percent(fraction: float) -> str:
    return "n/a" if fraction != fraction else f"{fraction:.0%}"  # NaN where /proc is missing


def _by_concurrency(tp: dict[str, Any], cell: Callable[[str, int], str]) -> list[str]:
    """A table, a row per client and a column per concurrency; ``cell(client, concurrency)``."""
    concurrencies = tp["concurrencies"]
    lines = [
        "| client | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
        "|---|" + "---|" * len(concurrencies),
    ]
    for name in tp["table"]:
        lines.append(f"| {name} | " + " | ".join(cell(name, c) for c in concurrencies) + " |")
    return lines


def plot(throughput: dict[str, Any], path: Path) -> None:
    """Creates/s against concurrency, one line per client, log-scaled concurrency axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    concurrencies = throughput["concurrencies"]
    for name, row in throughput["table"].items():
        axes.plot(concurrencies, [row[c]["rate"] for c in concurrencies], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(concurrencies, [str(c) for c in concurrencies])
    axes.set_xlabel("concurrency (requests in flight)")
    axes.set_ylabel("creates per second")
    axes.set_title("Loopback throughput against the sandbox")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
