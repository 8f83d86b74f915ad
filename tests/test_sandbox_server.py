"""The sandbox's own HTTP/1.1 server, spoken to byte by byte over loopback.

A scripted stand-in for the sandbox answers by path, so each framing case
(keep-alive, pipelining, held and dropped replies, HEAD, 100-continue, bad
requests, idle connections) is checked on the wire; the real sandbox checks
the body limit and the fixtures users get.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import httpx
import pytest

from ndax_async import AsyncClient
from ndax_async.testing import Sandbox, SandboxServer
from ndax_async.testing._http_server import SandboxHTTPServer
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
        if target == "/drop":
            return Reply(0, b"", drop=True)
        return Reply(200, target.encode(), {"content-type": "text/plain"})


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Response:
    """One response: status line, headers, and a Content-Length body (unless ``head_only``)."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    status_line, *lines = raw.decode("latin-1").split("\r\n")[:-2]
    assert status_line.startswith("HTTP/1.1 "), raw
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    length = 0 if head_only else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), GUARD)
    return Response(int(status_line.split()[1]), headers, body)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (EOF), having sent nothing more."""
    return await asyncio.wait_for(reader.read(), GUARD) == b""


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedSandbox, int]]:
    sandbox = ScriptedSandbox()
    server = SandboxHTTPServer(sandbox, "127.0.0.1", 0)  # type: ignore[arg-type]
    port = await server.start()
    yield sandbox, port
    await server.close()


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: sandbox", *extra, "", ""]).encode()


async def test_requests_on_one_connection_and_pipelined_are_answered_in_order(scripted: Any) -> None:
    sandbox, port = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/one"))
    assert (await read_response(reader)).body == b"/one"
    writer.write(get("/two") + get("/three?x=1") + get("/four"))  # three at once
    assert [(await read_response(reader)).body for _ in range(3)] == [b"/two", b"/three?x=1", b"/four"]
    writer.close()
    method, target, headers, body, client = sandbox.seen[2]
    assert (method, target, headers["host"], body, client) == (
        "GET",
        "/three?x=1",
        "sandbox",
        b"",
        "127.0.0.1",
    )


async def test_a_held_reply_holds_its_connection_only(scripted: Any) -> None:
    """A delayed reply keeps the requests behind it waiting, in order; another
    connection is answered meanwhile."""
    sandbox, port = scripted
    held_reader, held_writer = await asyncio.open_connection("127.0.0.1", port)
    held_writer.write(get("/slow") + get("/after-slow"))
    other_reader, other_writer = await asyncio.open_connection("127.0.0.1", port)
    other_writer.write(get("/other"))
    assert (await read_response(other_reader)).body == b"/other"
    assert [target for _, target, *_ in sandbox.seen] == ["/slow", "/other"]  # /after-slow not yet asked
    assert [(await read_response(held_reader)).body for _ in range(2)] == [b"/slow", b"/after-slow"]
    held_writer.close()
    other_writer.close()


async def test_a_dropped_reply_promises_a_body_and_closes(scripted: Any) -> None:
    _, port = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/drop") + get("/never"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    assert b"content-length: 64" in head
    assert await closed_by_server(reader)
    writer.close()


async def test_a_request_asking_to_close_is_answered_then_closed(scripted: Any) -> None:
    sandbox, port = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/last", "Connection: close") + get("/ignored"))
    response = await read_response(reader)
    assert (response.body, response.headers["connection"]) == (b"/last", "close")
    assert await closed_by_server(reader)
    assert [target for _, target, *_ in sandbox.seen] == ["/last"]
    writer.close()


async def test_head_gets_the_headers_without_the_body(scripted: Any) -> None:
    _, port = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/x").replace(b"GET", b"HEAD", 1) + get("/y"))
    head = await read_response(reader, head_only=True)
    assert head.headers["content-length"] == "2"
    assert (await read_response(reader)).body == b"/y"  # the next reply starts right after the head
    writer.close()


async def test_a_client_expecting_100_continue_gets_it_before_sending_the_body(scripted: Any) -> None:
    sandbox, port = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert (await read_response(reader)).status == 100
    writer.write(b"hello")
    assert (await read_response(reader)).body == b"/up"
    assert sandbox.seen[0][3] == b"hello"
    writer.close()


async def test_a_request_in_pieces_and_a_chunked_body_reach_the_sandbox_whole(scripted: Any) -> None:
    sandbox, port = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pieces = [b"POST /par", b"ts?q=1 HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"]
    for piece in [*pieces, b"2\r\nde\r\n0\r\n\r\n"]:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)  # each piece is read on its own
    assert (await read_response(reader)).body == b"/parts?q=1"
    assert sandbox.seen[0][3] == b"abcde"
    writer.close()


async def test_a_malformed_request_gets_400_and_a_close(scripted: Any) -> None:
    _, port = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/fine") + b"NOT HTTP AT ALL\r\n\r\n")
    assert (await read_response(reader)).body == b"/fine"
    assert (await read_response(reader)).status == 400
    assert await closed_by_server(reader)
    writer.close()


async def test_an_error_in_the_sandbox_is_logged_and_answered_500(
    scripted: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, port = scripted
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with caplog.at_level(logging.ERROR, logger="ndax_async.testing.server"):
        writer.write(get("/boom") + get("/fine"))
        assert (await read_response(reader)).status == 500
        assert (await read_response(reader)).body == b"/fine"  # the connection goes on
    assert "a bug in the sandbox" in caplog.text
    writer.close()


async def test_an_idle_connection_is_closed_and_a_busy_one_is_not() -> None:
    server = SandboxHTTPServer(ScriptedSandbox(), "127.0.0.1", 0, idle_timeout=0.2)  # type: ignore[arg-type]
    port = await server.start()
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(get("/a"))
        await read_response(idle_reader)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_writer.write(get("/slow-1") + get("/slow-2"))  # 0.6 s of held replies
        assert await closed_by_server(idle_reader)
        assert [(await read_response(busy_reader)).body for _ in range(2)] == [b"/slow-1", b"/slow-2"]
    finally:
        await server.close()
    idle_writer.close()
    busy_writer.close()


async def test_closing_the_server_closes_its_connections(scripted: Any) -> None:
    server = SandboxHTTPServer(ScriptedSandbox(), "127.0.0.1", 0)  # type: ignore[arg-type]
    port = await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/a"))
    await read_response(reader)
    await asyncio.wait_for(server.close(), GUARD)
    assert await closed_by_server(reader)
    writer.close()


async def test_a_body_over_the_limit_is_refused_without_being_read_whole() -> None:
    """The real sandbox answers 413 once the limit is passed; the rest is never read."""
    sandbox = Sandbox()
    server = SandboxHTTPServer(sandbox, "127.0.0.1", 0)
    port = await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
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
    finally:
        await server.close()


async def test_the_served_sandbox_creates_once_for_the_sdk_over_real_http() -> None:
    sandbox = Sandbox()
    server = SandboxHTTPServer(sandbox, "127.0.0.1", 0)
    port = await server.start()
    try:
        async with AsyncClient(**sandbox.credentials, base_url=f"http://127.0.0.1:{port}") as client:
            created = await client.customers.create(customer_wire())
            found = await client.participants.get_by_email(customer_wire()["email"])
    finally:
        await server.close()
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
        "import asyncio, gc\n"
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
            process.wait(10)


def test_the_foreground_sandbox_runs_on_uvloop_where_installed() -> None:
    """``ndax-async sandbox`` serves on uvloop where it is installed, as
    SandboxServer does (it once ran on the default asyncio loop)."""
    pytest.importorskip("uvloop")
    assert (
        foreground_sandbox_says("print(type(asyncio.get_running_loop()).__module__, flush=True)") == "uvloop"
    )


def test_the_foreground_sandbox_keeps_what_it_stores_out_of_full_collections() -> None:
    """``ndax-async sandbox`` owns its process: after a full collection the
    survivors are frozen, so later ones skip them; new garbage cycles are
    still collected."""
    said = foreground_sandbox_says(
        "stored = [[n] for n in range(50_000)]\n"
        "gc.collect()\n"
        "frozen = gc.get_freeze_count()\n"
        "cycle = []\n"
        "cycle.append(cycle)\n"
        "del cycle\n"
        "print(frozen > len(stored), gc.collect() >= 1, flush=True)"
    )
    assert said.split() == ["True", "True"]


async def test_a_closed_connection_is_freed_without_the_garbage_collector(scripted: Any) -> None:
    """serve_forever freezes what survives a full collection, so a connection
    object must not sit in a reference cycle once closed."""
    _, port = scripted
    gc.disable()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/a", "Connection: close"))
        await read_response(reader)
        assert await closed_by_server(reader)
        writer.close()
        await asyncio.sleep(0.05)  # the server's side sees the close
        alive = [o for o in gc.get_objects() if type(o).__name__ == "_Connection"]
        assert alive == []
    finally:
        gc.enable()


async def test_bodies_larger_than_the_shared_read_buffer_arrive_whole(scripted: Any) -> None:
    """Two connections, their pieces interleaved, read into one buffer."""
    sandbox, port = scripted
    bodies = {path: path.encode() * 40_000 for path in ("/first", "/second")}
    streams = {path: await asyncio.open_connection("127.0.0.1", port) for path in bodies}
    for path, (_, writer) in streams.items():
        writer.write(f"POST {path} HTTP/1.1\r\nContent-Length: {len(bodies[path])}\r\n\r\n".encode())
    for start in range(0, 40_000 * 7, 7_000):
        for path, (_, writer) in streams.items():
            writer.write(bodies[path][start : start + 7_000])
            await writer.drain()
        await asyncio.sleep(0)
    for path, (reader, writer) in streams.items():
        assert (await read_response(reader)).body == path.encode()
        writer.close()
    assert {target: body for _, target, _, body, _ in sandbox.seen} == bodies
