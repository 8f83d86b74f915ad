"""Onboarding workers on arq: 2,000 queued signups, 4 worker processes, 2 of them SIGKILLed again and again.

A real Redis (the broker) and the served sandbox (NDAX, light faults) run on
127.0.0.1. The signups go in through the example service's ``POST /signups``
(in-process); the workers are ``python -m examples.onboarding_worker``
processes. Two are SIGKILLed in three rounds, each time once they are running
jobs, and started again. Then: every customer exists exactly once at the
sandbox, no payload was sent under a second request_id, every job ended in
success with the code the sandbox holds, and jobs a killed worker held were
redone by arq (its in-progress key expired) as replays.

Select it with ``-m workers``; it takes about half a minute, most of it the
redelivery bound (``--job-timeout`` 3 s plus arq's 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ndax_async import ValidationError
from ndax_async.testing import FakeClock, Sandbox, SandboxServer

from .helpers import customer_wire
from .servers import RedisServer

pytest.importorskip("arq")
pytest.importorskip("fastapi")

from arq import ArqRedis, Retry, create_pool
from arq.connections import RedisSettings

from examples import signup_service
from examples.onboarding_worker import QUEUE_NAME, create_customer

pytestmark = pytest.mark.workers

ROOT = Path(__file__).resolve().parent.parent
SIGNUPS = 2000
WORKERS = 4
VICTIMS = (0, 1)
ROUNDS = 3
JOB_TIMEOUT = 3  # a killed worker's jobs come back within 3 + 10 s (arq's in-progress key)
HANG_GUARD = 150.0  # seconds: only so a broken build fails instead of hanging; never a speed check
STARTED = re.compile(r"→ (signup:[0-9a-f-]+):create_customer")
ENDED = re.compile(r"[←↻] (signup:[0-9a-f-]+):create_customer")


class Worker:
    """One worker slot: a process, restarted with a fresh log after each kill."""

    def __init__(self, index: int, folder: Path, env: dict[str, str], redis_url: str) -> None:
        self.index, self.folder, self.env, self.redis_url = index, folder, env, redis_url
        self.logs: list[Path] = []
        self.killed_logs: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.folder / f"worker{self.index}.{len(self.logs)}.log"
        self.logs.append(log)
        command = [sys.executable, "-m", "examples.onboarding_worker", "--redis", self.redis_url]
        command += ["--jobs", "16", "--job-timeout", str(JOB_TIMEOUT), "--rate", "60", "-v"]
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=output, stderr=output)

    def jobs_started(self) -> int:
        return len(STARTED.findall(self.logs[-1].read_text(errors="replace")))

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.killed_logs.append(self.logs[-1])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def sandbox_server() -> Iterator[tuple[Sandbox, str]]:
    sandbox = Sandbox(faults={"drop_after": 0.02, "err503": 0.02, "latency": 0.005, "seed": 21})
    with SandboxServer(sandbox) as server:
        yield sandbox, server.base_url


async def _until(condition: Any, what: str, deadline: float) -> None:
    """Wait for ``condition()`` (a hang guard, not a timing assertion)."""
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _service(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """The example signup service in-process (its lifespan run), configured by ``env``."""
    for name in ("NDAX_API_KEY", "NDAX_API_SECRET", "NDAX_PASSPHRASE", "NDAX_BASE_URL", "NDAX_QUEUE_URL"):
        if name in env:
            monkeypatch.setenv(name, env[name])
        else:
            monkeypatch.delenv(name, raising=False)
    app = signup_service.app
    async with (
        signup_service.lifespan(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as http,
    ):
        yield http


async def _queue_signups(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> list[dict[str, Any]]:
    """POST /signups for every customer (one twice, with the same key) through the example service."""
    answers: list[dict[str, Any]] = []
    async with _service(monkeypatch, env) as http:
        invalid = await http.post("/signups", json=customer_wire(zip="nope"))
        assert invalid.status_code == 422  # refused before queueing
        for start in range(0, SIGNUPS, 100):
            batch = [
                http.post(
                    "/signups",
                    json=customer_wire(email=f"signup{i}@example.com", id_number=f"{i:09d}"),
                    headers={"Idempotency-Key": f"signup-{i}"},
                )
                for i in range(start, start + 100)
            ]
            for response in await asyncio.gather(*batch):
                assert response.status_code == 202, response.text
                answers.append(response.json())
        again = await http.post(
            "/signups", json=customer_wire(email="signup7@example.com", id_number=f"{7:09d}"),
            headers={"Idempotency-Key": "signup-7"},
        )  # fmt: skip
        assert again.json() == {"job_id": answers[7]["job_id"], "queued": False}
    return answers


async def test_killed_workers_jobs_are_redone_and_every_customer_is_created_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox_server: tuple[Sandbox, str]
) -> None:
    sandbox, base_url = sandbox_server
    deadline = time.monotonic() + HANG_GUARD
    with RedisServer(tmp_path) as redis_server:
        env = {
            **os.environ,
            "NDAX_API_KEY": sandbox.api_key,
            "NDAX_API_SECRET": sandbox.api_secret,
            "NDAX_PASSPHRASE": sandbox.passphrase,
            "NDAX_BASE_URL": base_url,
            "NDAX_QUEUE_URL": redis_server.url,
        }
        answers = await _queue_signups(monkeypatch, env)
        assert all(answer["queued"] for answer in answers)
        queue: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_server.url))
        workers = [Worker(i, tmp_path, env, redis_server.url) for i in range(WORKERS)]
        try:
            for worker in workers:
                worker.start()
            for _ in range(ROUNDS):
                for index in VICTIMS:
                    victim = workers[index]

                    async def busy(victim: Worker = victim) -> bool:
                        return victim.jobs_started() >= 20

                    await _until(busy, f"worker {index} to run jobs", deadline)
                    victim.kill()
                    victim.start()

            async def drained() -> bool:
                return await queue.zcard(QUEUE_NAME) == 0

            await _until(drained, "the queue to drain", deadline)
            results = {result.job_id: result for result in await queue.all_job_results()}
            async with _service(monkeypatch, env) as http:
                status = (await http.get(f"/signups/{answers[0]['job_id']}")).json()
        finally:
            for worker in workers:
                worker.stop()
            await queue.aclose()

    # Every customer exactly once at NDAX, and no payload under a second request_id.
    emails = Counter(str(p["email"]) for p in sandbox.participants.values())
    assert set(emails) == {f"signup{i}@example.com" for i in range(SIGNUPS)}
    assert max(emails.values()) == 1
    stats = sandbox.stats
    assert (stats["creations"], stats["duplicates"], stats["duplicate_payloads"], stats["conflicts"]) == (
        SIGNUPS, 0, 0, 0,
    )  # fmt: skip

    # No job lost: each ended in success with the code NDAX holds for its email.
    codes = {str(p["email"]): p["participant_code"] for p in sandbox.participants.values()}
    assert len(results) == SIGNUPS
    for answer in answers:
        result = results[answer["job_id"]]
        assert result.success, result.result
        assert result.result["participant_code"] == codes[result.result["email"]]
        assert result.result["existing"] is False

    assert status["status"] == "complete"
    assert status["result"]["participant_code"] == codes["signup0@example.com"]

    # The kills did hit running jobs, and arq ran those again elsewhere (as replays).
    interrupted: set[str] = set()
    for index in VICTIMS:
        for log in workers[index].killed_logs:
            text = log.read_text(errors="replace")
            interrupted |= set(STARTED.findall(text)) - set(ENDED.findall(text))
    assert interrupted, "no kill interrupted a running job: the test proved nothing"
    assert all(results[job_id].success for job_id in interrupted)
    assert all(results[job_id].job_try > 1 for job_id in interrupted)


async def test_the_service_without_a_queue_answers_503(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = Sandbox()
    env = {"NDAX_API_KEY": sandbox.api_key, "NDAX_API_SECRET": sandbox.api_secret}
    env |= {"NDAX_PASSPHRASE": sandbox.passphrase, "NDAX_BASE_URL": "http://127.0.0.1:9"}
    async with _service(monkeypatch, env) as http:
        answer = await http.post("/signups", json=customer_wire())
    assert answer.status_code == 503
    assert "NDAX_QUEUE_URL" in answer.json()["detail"]


async def test_the_job_leaves_transient_errors_to_arq_and_raises_the_rest() -> None:
    clock = FakeClock()
    sandbox = Sandbox(clock=clock.time)
    async with sandbox.client(clock=clock, max_retries=1) as client:
        ctx: dict[str, Any] = {"ndax": client, "call_budget": 5.0, "job_try": 3, "job_id": "signup:x"}
        request_id = "5b0c7d6e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"
        sandbox.faults(err503=1.0)
        with pytest.raises(Retry) as retry:
            await create_customer(ctx, request_id, customer_wire())
        assert retry.value.defer_score == 8000  # 2 ** job_try seconds, in ms
        sandbox.faults()
        with pytest.raises(ValidationError):
            await create_customer(ctx, request_id, customer_wire(zip="nope"))
        result = await create_customer(ctx, request_id, customer_wire())
        again = await create_customer(ctx, request_id, customer_wire())
    assert result == again == {
        "participant_code": result["participant_code"], "email": "email-example@mail.com", "existing": False,
    }  # fmt: skip
    assert (sandbox.stats["creations"], sandbox.stats["replays"]) == (1, 1)
