"""Soak: the example signup service under uvicorn, NDAX (the sandbox) faulty, load from another process.

A load generator process sends signups at 100+ concurrent requests, abandons
a share mid-flight and retries those with the same Idempotency-Key. Then:
every 2xx signup exists exactly once at the sandbox with the code the service
answered; no duplicate customer at all; the service's file descriptors and
tasks do not grow from one load round to the next; and it shuts down cleanly.

Short in CI; ``NDAX_SOAK_FULL=1`` runs the full soak (thousands of signups).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ndax_async.testing import Faults, Sandbox, SandboxServer

pytest.importorskip("fastapi")

FULL = bool(os.environ.get("NDAX_SOAK_FULL"))
SIGNUPS, CONCURRENCY = (4000, 160) if FULL else (500, 110)
ROOT = Path(__file__).resolve().parent.parent
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 0.5  # the sandbox closes keep-alive connections idle this long
SETTLE_DEADLINE = 30.0
BAD_SHUTDOWN = ("Event loop is closed", "Task was destroyed", "never retrieved", "Unclosed", "Traceback")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _health(base: str) -> dict[str, Any]:
    reply: dict[str, Any] = httpx.get(base + "/healthz", timeout=5).json()
    return reply


def _settle(base: str, pid: int, ndax: SandboxServer, idle: tuple[int, int] | None = None) -> tuple[int, int]:
    """(fds, tasks) once the sandbox holds no connection (it closes them after
    IDLE_TIMEOUT idle) and, given the idle figures, once the service is back to
    them; after SETTLE_DEADLINE, whatever they are (the caller's assertions then fail)."""
    deadline = time.monotonic() + SETTLE_DEADLINE
    while True:
        fds, tasks = _open_fds(pid), _health(base)["tasks"]
        back = idle is None or (fds <= idle[0] + 2 and tasks == idle[1])
        if (ndax.open_connections == 0 and back) or time.monotonic() > deadline:
            return fds, tasks
        time.sleep(0.05)


def _load(base: str, tag: str, signups: int, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "examples.loadgen", "--url", base, "--signups", str(signups)]
    command += ["--concurrency", str(CONCURRENCY), "--abandon", "0.15", "--tag", tag, "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts descriptors through /proc")
def test_signup_service_soak(tmp_path: Path) -> None:
    faults = Faults(drop_before=0.03, drop_after=0.05, err503=0.03, slow_after=0.02, slow_seconds=0.5, seed=3)
    sandbox = Sandbox(faults=faults)
    with SandboxServer(sandbox, idle_timeout=IDLE_TIMEOUT) as ndax:
        port = _free_port()
        env = {
            **os.environ,
            "NDAX_API_KEY": sandbox.api_key,
            "NDAX_API_SECRET": sandbox.api_secret,
            "NDAX_PASSPHRASE": sandbox.passphrase,
            "NDAX_BASE_URL": ndax.base_url,
            "SIGNUP_NDAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "SIGNUP_NDAX_DEADLINE": "8",
            "PYTHONWARNINGS": "always",
        }
        command = [sys.executable, "-m", "uvicorn", "examples.signup_service:app", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", "warning"]
        log = (tmp_path / "service.log").open("w+")  # a file, not a pipe: a full pipe would block it
        service = subprocess.Popen(command, cwd=ROOT, env=env, stderr=log, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    if _health(base)["ok"]:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            fds_idle, tasks_idle = _settle(base, service.pid, ndax)
            first = _load(base, "soak1", SIGNUPS, tmp_path / "first.json")
            fds_after_first, tasks_after_first = _settle(base, service.pid, ndax, (fds_idle, tasks_idle))
            second = _load(base, "soak2", SIGNUPS // 2, tmp_path / "second.json")
            fds_after_second, tasks_after_second = _settle(base, service.pid, ndax, (fds_idle, tasks_idle))
        finally:
            service.send_signal(signal.SIGINT)
            service.wait(timeout=30)
            log.seek(0)
            stderr = log.read()
            log.close()

    records = first["records"] + second["records"]
    by_email: dict[str, list[dict[str, Any]]] = {}
    for participant in sandbox.participants.values():
        by_email.setdefault(participant["email"], []).append(participant)
    succeeded = [r for r in records if r.get("status") == 201]
    failed = [r for r in records if r.get("status") != 201]
    assert len(succeeded) == len(records), (failed[:3], stderr[-3000:])
    for record in succeeded:
        matches = by_email.get(record["email"], [])
        assert len(matches) == 1, record  # exactly once at NDAX
        assert matches[0]["participant_code"] == record["body"]["participant_code"]
    abandoned = [r for r in records if r["abandoned"]]
    assert len(abandoned) > SIGNUPS // 20  # the generator really abandoned requests
    stats = sandbox.stats
    assert stats["duplicates"] == stats["conflicts"] == stats["duplicate_payloads"] == 0
    assert stats["creations"] == len(records) == len(by_email)
    assert stats["faults"].get("drop_after", 0) > 0
    assert stats["replays"] > 0
    # No leak: once idle, descriptors and tasks are back where they were before any load.
    counts = {"idle": (fds_idle, tasks_idle), "after first": (fds_after_first, tasks_after_first)}
    counts["after second"] = (fds_after_second, tasks_after_second)
    assert fds_after_first <= fds_idle + 2, counts
    assert fds_after_second <= fds_idle + 2, counts
    assert tasks_after_first == tasks_after_second == tasks_idle, counts
    assert service.returncode == 0, stderr
    assert not [line for line in stderr.splitlines() if any(bad in line for bad in BAD_SHUTDOWN)], stderr
    figures = {k: v for k, v in first.items() if k != "records"}
    print(f"\nsoak: {figures} descriptors and tasks {counts}")
