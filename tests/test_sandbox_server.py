"""The sandbox served over loopback by uvicorn: what users rely on, checked on the wire.

A scripted stand-in for the sandbox answers by path, so held and dropped
replies, errors and idle connections are checked byte by byte; the real
sandbox checks the body limit, the SDK end to end and the foreground server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import httpx
import pytest

from ndax_async import AsyncClient
from ndax_async.testing import Sandbox, SandboxServer
from ndax_async.testing.sandbox import MAX_BODY_BYTES, Reply

from .helpers import customer_wire

GUARD = 10  # seconds: a test that would hang fails instead


class ScriptedSandbox:
    """Answers like :meth:`Sandbox.handle`: by path, and records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes, str]] = []

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes, client: str) -> Reply:
        self.seen.append((method, target, dict(headers), body, client))
        if target == "/boom":
            raise RuntimeError("a bug in the sandbox")
        if target.startswith("/slow"):
            return Reply(200, target.encode(), delay=0.3)
        if target == "/held":
            return Reply(200, target.encode(), delay=60)
        if target == "/drop":
            return Reply(0, b"", drop=True)
        return Reply(200, target.encode(), {"content-type": "text/plain"})


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One response: status line, headers, and a Content-Length body."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    status_line, *lines = raw.decode("latin-1").split("\r\n")[:-2]
    assert status_line.startswith("HTTP/1.1 "), raw
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), GUARD)
    return Response(int(status_line.split()[1]), headers, body)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (EOF), having sent nothing more."""
    return await asyncio.wait_for(reader.read(), GUARD) == b""


async def until(condition: Callable[[], bool]) -> None:
    """Wait for what the server's thread makes true (polled: it cannot set an asyncio.Event here)."""
    for _ in range(GUARD * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never came true")


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: sandbox", *extra, "", ""]).encode()


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedSandbox, SandboxServer]]:
    sandbox = ScriptedSandbox()
    with SandboxServer(sandbox, idle_timeout=0.5) as server:  # type: ignore[arg-type]
        yield sandbox, server


async def test_requests_on_one_connection_are_answered_in_order_with_the_peer_address(scripted: Any) -> None:
    sandbox, server = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get("/one"))
    assert (await read_response(reader)).body == b"/one"
    writer.write(get("/two") + get("/three?x=1"))  # pipelined
    assert [(await read_response(reader)).body for _ in range(2)] == [b"/two", b"/three?x=1"]
    writer.close()
    method, target, headers, body, client = sandbox.seen[2]
    assert (method, target, headers["host"], body, client) == (
        "GET",
        "/three?x=1",
        "sandbox",
        b"",
        "127.0.0.1",
    )


async def test_replies_carry_a_content_length_not_chunks(scripted: Any) -> None:
    _, server = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get("/sized"))
    response = await read_response(reader)
    assert (response.headers["content-length"], response.body) == ("6", b"/sized")
    assert "transfer-encoding" not in response.headers
    writer.close()


async def test_a_held_reply_does_not_hold_other_connections(scripted: Any) -> None:
    sandbox, server = scripted
    held_reader, held_writer = await asyncio.open_connection("127.0.0.1", server.port)
    held_writer.write(get("/slow"))
    await until(lambda: bool(sandbox.seen))  # the held request has reached the sandbox
    other_reader, other_writer = await asyncio.open_connection("127.0.0.1", server.port)
    other_writer.write(get("/other"))
    assert (await read_response(other_reader)).body == b"/other"
    assert (await read_response(held_reader)).body == b"/slow"  # answered after the other one
    held_writer.close()
    other_writer.close()


async def test_a_dropped_reply_promises_a_body_and_closes_without_a_traceback(
    scripted: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, server = scripted
    with caplog.at_level(logging.DEBUG):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(get("/drop"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
        assert b"content-length: 64" in head
        assert await closed_by_server(reader)
        writer.close()
    assert "Traceback" not in caplog.text
    assert not [record for record in caplog.records if record.exc_info]


async def test_an_error_in_the_sandbox_is_logged_and_answered_500(
    scripted: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, server = scripted
    with caplog.at_level(logging.ERROR):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(get("/boom"))
        assert (await read_response(reader)).status == 500
        writer.close()
    assert "a bug in the sandbox" in caplog.text


async def test_an_idle_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not(
    scripted: Any,
) -> None:
    _, server = scripted  # idle_timeout=0.5
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    idle_writer.write(get("/a"))
    await read_response(idle_reader)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", server.port)
    replies = []
    for n in range(4):  # busy for 1.2 s: 0.3 s held replies, one after another
        busy_writer.write(get(f"/slow-{n}"))
        replies.append((await read_response(busy_reader)).body)
    assert replies == [f"/slow-{n}".encode() for n in range(4)]
    assert idle_reader.at_eof()  # closed meanwhile, after 0.5 s idle (the default would wait 5 s)
    await until(lambda: server.open_connections == 0)  # the busy one goes idle and is closed in turn
    assert await closed_by_server(busy_reader)
    idle_writer.close()
    busy_writer.close()


async def test_stopping_the_server_closes_its_connections_and_cuts_a_held_reply() -> None:
    sandbox = ScriptedSandbox()
    server = SandboxServer(sandbox)  # type: ignore[arg-type]
    server.start()
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    idle_writer.write(get("/a"))
    await read_response(idle_reader)
    held_reader, held_writer = await asyncio.open_connection("127.0.0.1", server.port)
    held_writer.write(get("/held"))  # a 60 s reply
    await until(lambda: len(sandbox.seen) == 2)
    await asyncio.wait_for(asyncio.to_thread(server.stop), GUARD)
    assert await closed_by_server(idle_reader)
    head = await asyncio.wait_for(held_reader.read(), GUARD)
    assert b" 500 " not in head  # cut, never answered with the server's own error
    idle_writer.close()
    held_writer.close()


async def test_a_body_over_the_limit_is_refused_without_being_read_whole() -> None:
    """The real sandbox answers 413 once the limit is passed; the rest is never read."""
    with SandboxServer(Sandbox()) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        declared = 50 * MAX_BODY_BYTES
        writer.write(
            f"POST /participants/customers/new HTTP/1.1\r\nContent-Length: {declared}\r\n\r\n".encode()
        )
        writer.write(b"x" * (MAX_BODY_BYTES + 1))
        response = await read_response(reader)
        assert (response.status, json.loads(response.body)) == (413, {"error": "Payload Too Large"})
        assert response.headers["connection"] == "close"
        assert await closed_by_server(reader)
        writer.close()


async def test_the_served_sandbox_creates_once_for_the_sdk_over_real_http() -> None:
    sandbox = Sandbox()
    with SandboxServer(sandbox) as server:
        async with AsyncClient(**sandbox.credentials, base_url=server.base_url) as client:
            created = await client.customers.create(customer_wire())
            found = await client.participants.get_by_email(customer_wire()["email"])
    assert found is not None
    assert found.participant_code == created.participant_code
    assert sandbox.stats["creations"] == 1


async def test_the_asgi_app_answers_in_process() -> None:
    """``sandbox.asgi_app()`` is still there to mount elsewhere."""
    sandbox = Sandbox()
    transport = httpx.ASGITransport(app=sandbox.asgi_app())
    async with AsyncClient(**sandbox.credentials, base_url="http://127.0.0.1", transport=transport) as client:
        created = await client.customers.create(customer_wire())
    assert created.participant_code == "P0000001"
    assert sandbox.stats["creations"] == 1


def test_a_sandbox_server_that_cannot_listen_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = SandboxServer(Sandbox(), port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="failed to start") as caught:
            server.start()
    assert isinstance(caught.value.__cause__, OSError)
    server.stop()  # nothing left running; stopping again is harmless
    SandboxServer(Sandbox()).stop()  # never started


def foreground_sandbox_says(on_ready_body: str) -> str:
    """Run ``serve_forever`` in a child process; return the line its ``on_ready`` prints."""
    script = (
        "import asyncio\n"
        "from ndax_async.testing import Sandbox\n"
        "from ndax_async.testing.server import serve_forever\n"
        "def ready(line):\n"
        + "".join(f"    {line}\n" for line in on_ready_body.splitlines())
        + "serve_forever(Sandbox(), 0, on_ready=ready)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            return process.stdout.readline().strip()
        finally:
            process.terminate()
            process.wait(GUARD)


def test_the_foreground_sandbox_says_where_it_listens() -> None:
    """The ``on_ready`` line's format is parsed by benchmarks and scripts: it stays."""
    line = foreground_sandbox_says("print(line, flush=True)")
    words = line.split()
    assert words[:3] == ["NDAX", "sandbox", "at"]
    assert words[3].startswith("http://127.0.0.1:")
    sandbox = Sandbox()
    assert words[4:] == [f"{k}={v}" for k, v in sandbox.credentials.items()]


def test_the_foreground_sandbox_answers_once_ready_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "ndax_async.cli", "sandbox", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().split()[3]
            assert httpx.get(base_url + "/participants", timeout=GUARD).status_code == 401  # unsigned
        finally:
            process.terminate()
            process.wait(GUARD)  # raises if SIGTERM did not stop it


def test_the_foreground_sandbox_runs_on_uvloop_where_installed() -> None:
    """uvicorn picks uvloop by itself where it is installed (``loop="auto"``)."""
    pytest.importorskip("uvloop")
    assert (
        foreground_sandbox_says("print(type(asyncio.get_running_loop()).__module__, flush=True)") == "uvloop"
    )
