"""The built-in HTTP/1.1 sender against a scripted loopback server.

Each test's server answers with exact bytes, so the framing cases the sandbox
never produces (chunked, gzip, read-until-close, 1xx, a close mid-response)
are covered, along with pooling, limits, TLS and refusal of header injection.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import httpx
import pytest

from ndax_async import AsyncClient
from ndax_async._sending import http1 as _http1
from ndax_async._sending.http1 import BuiltinSender
from ndax_async.errors import ClientClosedError
from ndax_async.testing import FakeClock

from .helpers import API_KEY, API_SECRET, PASSPHRASE, customer_wire

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    """Reads whole requests and answers each with ``reply(request, writer)``."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.open_connections = 0
        self.most_open = 0
        self.closed_by_client = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self.most_open = max(self.most_open, self.open_connections)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.reply(request, writer)
                if writer.is_closing():
                    return
        finally:
            self.open_connections -= 1
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Reply], Awaitable[ScriptedServer]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: Reply, ssl_context: ssl.SSLContext | None = None) -> ScriptedServer:
        scripted = ScriptedServer(reply)
        scripted.server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0, ssl=ssl_context)
        servers.append(scripted.server)
        return scripted

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def sender() -> AsyncIterator[BuiltinSender]:
    pool = BuiltinSender(4)
    yield pool
    await pool.aclose()


def answer(raw: bytes, *, close: bool = False) -> Reply:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()

    return reply


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


async def post(sender: BuiltinSender, url: str, body: bytes | None = b'{"a":1}') -> Any:
    return await sender.send("POST", url + "/p", {"X-Test": "1"}, body, None)


async def test_request_bytes_are_exactly_what_the_transport_gave(serve: Any, sender: BuiltinSender) -> None:
    server = await serve(answer(OK))
    response = await sender.send("POST", server.url + "/a/b?c=d", {"X-One": "1"}, b'{"k":"v"}', None)
    assert response.status_code == 200
    assert response.content == b'{"ok":true}'
    assert response.headers["content-type"] == "application/json"
    host = server.url.removeprefix("http://")
    expected = f'POST /a/b?c=d HTTP/1.1\r\nHost: {host}\r\nX-One: 1\r\nContent-Length: 9\r\n\r\n{{"k":"v"}}'
    assert server.requests == [expected.encode()]


async def test_a_get_carries_no_body_or_length(serve: Any, sender: BuiltinSender) -> None:
    server = await serve(answer(OK))
    await sender.send("GET", server.url + "/x", {"Accept": "application/json"}, None, None)
    assert b"Content-Length" not in server.requests[0]
    assert server.requests[0].startswith(b"GET /x HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("raw", "close"),
    [
        (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"ok\r\n7\r\n":true}\r\n0\r\n\r\n', 0),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'{"ok":true}', 1),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(gzip.compress(b'{"ok":true}')), gzip.compress(b'{"ok":true}')),
            0,
        ),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK, 0),
    ],
    ids=["chunked", "read-until-close", "gzip", "interim-1xx"],
)
async def test_every_response_framing_gives_the_same_body(
    serve: Any, raw: bytes, close: int, sender: BuiltinSender
) -> None:
    server = await serve(answer(raw, close=bool(close)))
    response = await post(sender, server.url)
    assert (response.status_code, response.content) == (200, b'{"ok":true}')


async def test_keep_alive_reuses_one_connection(serve: Any, sender: BuiltinSender) -> None:
    server = await serve(answer(OK))
    for _ in range(5):
        assert (await post(sender, server.url)).status_code == 200
    assert server.connections == 1
    assert len(server.requests) == 5


async def test_connection_close_is_honoured(serve: Any, sender: BuiltinSender) -> None:
    raw = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    server = await serve(answer(raw))  # says close but leaves it open: only the header tells
    for _ in range(3):
        assert (await post(sender, server.url)).status_code == 200
    assert server.connections == 3


async def test_an_idle_connection_the_server_closed_is_not_reused(serve: Any, sender: BuiltinSender) -> None:
    server = await serve(answer(OK, close=True))  # closes after answering, without saying so
    assert (await post(sender, server.url)).status_code == 200
    await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
    assert (await post(sender, server.url)).status_code == 200
    assert server.connections == 2


@pytest.mark.parametrize("pause", [0.0, 0.02], ids=["same-packet", "later"])
async def test_bytes_after_a_response_retire_the_connection(
    serve: Any, pause: float, sender: BuiltinSender
) -> None:
    async def extra(request: bytes, writer: asyncio.StreamWriter) -> None:
        unsolicited = b"HTTP/1.1 200 OK\r\n"  # the next reply on this connection would be misread
        if pause:
            writer.write(OK)
            await writer.drain()
            await asyncio.sleep(pause)
            writer.write(unsolicited)
        else:
            writer.write(OK + unsolicited)

    server = await serve(extra)
    assert (await post(sender, server.url)).status_code == 200
    await asyncio.sleep(0.05)
    assert (await post(sender, server.url)).status_code == 200
    assert server.connections == 2


@pytest.mark.parametrize(
    "raw",
    [
        b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"partial',
        b"HTTP/1.1 200 OK\r\nContent-Len",
        b"",
    ],
    ids=["short-body", "short-head", "nothing"],
)
async def test_a_close_mid_response_is_a_remote_protocol_error(
    serve: Any, raw: bytes, sender: BuiltinSender
) -> None:
    server = await serve(answer(raw, close=True))
    with pytest.raises(httpx.RemoteProtocolError, match="closed the connection"):
        await post(sender, server.url)


async def test_a_malformed_response_is_a_remote_protocol_error(serve: Any, sender: BuiltinSender) -> None:
    server = await serve(answer(b"NOT HTTP AT ALL\r\n\r\n"))
    with pytest.raises(httpx.RemoteProtocolError, match="malformed HTTP response"):
        await post(sender, server.url)


async def test_a_broken_gzip_body_is_a_decoding_error(serve: Any, sender: BuiltinSender) -> None:
    server = await serve(answer(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc"))
    with pytest.raises(httpx.DecodingError, match="gzip"):
        await post(sender, server.url)


async def test_an_oversized_body_is_refused(
    serve: Any, monkeypatch: pytest.MonkeyPatch, sender: BuiltinSender
) -> None:
    monkeypatch.setattr(_http1, "MAX_RESPONSE_BYTES", 100)
    server = await serve(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + b"x" * 500))
    with pytest.raises(httpx.RemoteProtocolError, match="over 100 bytes"):
        await post(sender, server.url)


@pytest.mark.parametrize(
    ("headers", "url_path"),
    [({"X-Evil": "a\r\nX-Injected: 1"}, "/p"), ({"X-Evil": "a\nb"}, "/p"), ({}, "/p\r\nX-Injected: 1")],
    ids=["crlf-in-value", "lf-in-value", "crlf-in-path"],
)
async def test_a_line_break_in_a_header_or_path_is_refused_before_sending(
    serve: Any, headers: dict[str, str], url_path: str, sender: BuiltinSender
) -> None:
    server = await serve(answer(OK))
    with pytest.raises(ValueError, match="line break"):
        await sender.send("GET", server.url + url_path, headers, None, None)
    assert server.requests == []


async def test_a_non_ascii_path_is_percent_encoded(serve: Any, sender: BuiltinSender) -> None:
    server = await serve(answer(OK))
    await sender.send("GET", server.url + "/participants/ÄB1", {}, None, None)
    assert server.requests[0].startswith(b"GET /participants/%C3%84B1 HTTP/1.1\r\n")


async def test_at_most_max_connections_are_open_at_once(serve: Any) -> None:
    async def slow(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.02)
        writer.write(OK)

    server = await serve(slow)
    sender = BuiltinSender(2)
    responses = await asyncio.gather(*(post(sender, server.url) for _ in range(10)))
    await sender.aclose()
    assert [r.status_code for r in responses] == [200] * 10
    assert server.most_open == 2


async def test_a_cancelled_request_closes_its_connection(serve: Any) -> None:
    async def late(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        writer.write(OK)

    server = await serve(late)
    sender = BuiltinSender(1)
    call = asyncio.create_task(post(sender, server.url))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.3)
    assert server.closed_by_client == 1  # not returned to the pool half-read
    assert (await post(sender, server.url)).status_code == 200  # and its slot is free again
    await sender.aclose()


def held_until(release: asyncio.Event) -> Reply:
    """Answers OK, the first request only once ``release`` is set."""

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> None:
        if b"first" in request:
            await release.wait()
        writer.write(OK)

    return reply


class Held(NamedTuple):
    """A one-connection sender, and a server that answers ``/first`` only once ``release`` is set."""

    release: asyncio.Event
    server: ScriptedServer
    sender: BuiltinSender


@pytest.fixture
async def held(serve: Any) -> AsyncIterator[Held]:
    release = asyncio.Event()
    sender = BuiltinSender(1)
    yield Held(release, await serve(held_until(release)), sender)
    release.set()
    await sender.aclose()


def start(sender: BuiltinSender, server: ScriptedServer, name: str) -> asyncio.Task[Any]:
    """POST ``/<name>`` in a task of its own."""
    return asyncio.create_task(sender.send("POST", f"{server.url}/{name}", {}, b"{}", None))


async def settle(calls: list[asyncio.Task[Any]]) -> None:
    """Wait for ``calls`` to end, failing (not hanging) if a freed slot was lost."""
    _, pending = await asyncio.wait(calls, timeout=5)
    assert not pending, "a call still waits: a freed slot was not passed on"


async def test_a_waiting_request_is_written_as_soon_as_a_response_frees_its_connection(held: Held) -> None:
    release, server, sender = held
    events: list[str] = []

    def headers(name: str) -> Callable[[], dict[str, str]]:
        def make() -> dict[str, str]:
            events.append(f"{name} signed")
            return {"X-Name": name}

        return make

    async def call(name: str) -> None:
        await sender.send_signed("POST", server.url + "/" + name, headers(name), b"{}", None)
        events.append(f"{name} answered")

    first = asyncio.create_task(call("first"))
    second = asyncio.create_task(call("second"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert events == ["first signed"]  # the second waits for the only connection, unsigned
    release.set()
    await settle([first, second])
    await sender.aclose()
    # Signed and written from the first's response callback, before the first's caller resumed.
    assert events == ["first signed", "second signed", "first answered", "second answered"]
    assert server.connections == 1


async def test_a_caller_that_stops_waiting_in_the_queue_is_never_sent(held: Held) -> None:
    release, server, sender = held
    first = start(sender, server, "first")
    second = start(sender, server, "second")
    third = start(sender, server, "third")
    await asyncio.sleep(0.05)
    second.cancel()
    release.set()
    await settle([first, second, third])
    await sender.aclose()
    assert second.cancelled()
    assert first.result().status_code == third.result().status_code == 200
    assert [request.split(b" ")[1] for request in server.requests] == [b"/first", b"/third"]


async def test_a_slot_handed_over_without_a_connection_is_passed_on_if_unused(serve: Any) -> None:
    """A response that closes its connection hands the slot to the next caller, who
    connects itself; if that caller is cancelled before it resumes, the slot goes on."""
    raw = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    server = await serve(answer(raw, close=True))
    sender = BuiltinSender(1)
    calls: list[asyncio.Task[Any]] = []

    async def first_then_cancel_the_second() -> Any:
        response = await post(sender, server.url)
        calls[1].cancel()  # handed the slot already, not resumed yet
        return response

    calls.append(asyncio.create_task(first_then_cancel_the_second()))
    calls.extend(asyncio.create_task(post(sender, server.url)) for _ in range(3))
    await settle(calls)
    await sender.aclose()
    assert calls[1].cancelled()
    assert [call.result().status_code for call in calls if not call.cancelled()] == [200, 200, 200]
    assert server.connections == 3
    assert server.most_open == 1


async def test_headers_that_fail_when_a_waiting_request_is_written_fail_that_call_only(held: Held) -> None:
    release, server, sender = held

    def broken() -> dict[str, str]:
        return {"X-Evil": "a\r\nX-Injected: 1"}

    first = start(sender, server, "first")
    second = asyncio.create_task(sender.send_signed("POST", server.url + "/second", broken, b"{}", None))
    third = start(sender, server, "third")
    await asyncio.sleep(0.05)
    release.set()
    await settle([first, second, third])
    await sender.aclose()
    with pytest.raises(ValueError, match="line break"):
        second.result()
    assert third.result().status_code == 200
    assert [request.split(b" ")[1] for request in server.requests] == [b"/first", b"/third"]


async def test_aclose_fails_waiting_requests_instead_of_leaving_them(held: Held) -> None:
    release, server, sender = held
    first = start(sender, server, "first")
    second = start(sender, server, "second")
    await asyncio.sleep(0.05)
    await sender.aclose()
    await settle([first, second])
    release.set()
    with pytest.raises(httpx.RemoteProtocolError):
        first.result()
    with pytest.raises(ClientClosedError):
        second.result()


async def test_the_client_signs_a_call_waiting_for_a_connection_when_it_is_written(
    serve: Any, clock: FakeClock
) -> None:
    """The built-in sender queues calls beyond max_connections itself; each is signed
    as it is written, so a signature is never older than its send (about 60 s of skew)."""
    release = asyncio.Event()
    stamps: list[tuple[int, int]] = []  # (X-NDAX-TIMESTAMP sent, the clock when the server read it)
    body = b'{"message": {"participant_code": "P1"}}'
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def respond(request: bytes, writer: asyncio.StreamWriter) -> None:
        stamp = re.search(rb"X-NDAX-TIMESTAMP: (\d+)", request, re.IGNORECASE)
        assert stamp is not None
        stamps.append((int(stamp.group(1)), int(clock.time())))
        if len(stamps) == 1:
            await release.wait()  # the first call holds the only connection
        writer.write(reply)

    server = await serve(respond)
    async with AsyncClient(
        api_key=API_KEY,
        api_secret=API_SECRET,
        passphrase=PASSPHRASE,
        base_url=server.url,
        max_connections=1,
        clock=clock,
    ) as client:
        first = asyncio.create_task(client.customers.create(customer_wire(email="a@mail.com")))
        second = asyncio.create_task(client.customers.create(customer_wire(email="b@mail.com")))
        await asyncio.sleep(0.05)
        assert len(stamps) == 1  # the second call waits for the connection
        clock.advance(45)
        release.set()
        await settle([first, second])
    assert [sent for sent, _ in stamps] == [read for _, read in stamps]
    assert stamps[1][0] - stamps[0][0] == 45


async def test_aclose_closes_pooled_connections(serve: Any, sender: BuiltinSender) -> None:
    server = await serve(answer(OK))
    await post(sender, server.url)
    await sender.aclose()
    await asyncio.sleep(0.05)
    assert server.closed_by_client == 1
    with pytest.raises(ClientClosedError):
        await post(sender, server.url)


async def test_a_refused_connection_is_a_connect_error(serve: Any, sender: BuiltinSender) -> None:
    server = await serve(answer(OK))
    url = server.url
    assert server.server is not None
    server.server.close()
    await server.server.wait_closed()
    with pytest.raises(httpx.ConnectError, match="cannot connect"):
        await post(sender, url)


def test_the_pool_is_bound_to_its_first_event_loop() -> None:
    async def serve_and_send(sender: BuiltinSender) -> int:
        server = await asyncio.start_server(ScriptedServer(answer(OK)).handle, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        try:
            return (await post(sender, f"http://{host}:{port}")).status_code  # type: ignore[no-any-return]
        finally:
            server.close()

    sender = BuiltinSender(4)
    assert asyncio.run(serve_and_send(sender)) == 200
    with pytest.raises(ClientClosedError, match="bound to the event loop"):
        asyncio.run(serve_and_send(sender))


def test_it_runs_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        scripted = ScriptedServer(answer(OK))
        server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        sender = BuiltinSender(2)
        try:
            responses = await asyncio.gather(*(post(sender, f"http://{host}:{port}") for _ in range(6)))
            return [response.status_code for response in responses]
        finally:
            await sender.aclose()
            server.close()

    assert uvloop.run(main()) == [200] * 6


@pytest.fixture(scope="module")
def certificate_authority() -> Any:
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


async def test_https_with_a_trusted_certificate(serve: Any, certificate_authority: Any) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("localhost").configure_cert(server_context)
    server = await serve(answer(OK), server_context)
    port = server.url.rsplit(":", 1)[1]
    client_context = ssl.create_default_context()
    certificate_authority.configure_trust(client_context)
    sender = BuiltinSender(2, verify=client_context)
    # Six calls over two connections: four are written from a TLS response's callback.
    responses = await asyncio.gather(*(post(sender, f"https://localhost:{port}") for _ in range(6)))
    await sender.aclose()
    assert [response.content for response in responses] == [b'{"ok":true}'] * 6
    assert server.connections == 2


async def test_https_with_an_untrusted_certificate_is_refused(serve: Any, certificate_authority: Any) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("localhost").configure_cert(server_context)
    server = await serve(answer(OK), server_context)
    port = server.url.rsplit(":", 1)[1]
    sender = BuiltinSender(2)  # the system's trust store: it does not know this CA
    with pytest.raises(httpx.ConnectError, match="TLS handshake"):
        await post(sender, f"https://localhost:{port}")
    await sender.aclose()
    assert server.requests == []


def _big_body(request: bytes) -> bytes:
    """A body larger than the read buffer, different for each request path."""
    path = request.split(b" ", 2)[1]
    return (path + b"|") * (3 * _http1.READ_BUFFER_BYTES // (len(path) + 1) + 7)


async def _answer_big_in_pieces(request: bytes, writer: asyncio.StreamWriter) -> None:
    body = _big_body(request)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    for start in range(0, len(body), 10_000):
        writer.write(body[start : start + 10_000])
        await writer.drain()
        await asyncio.sleep(0)  # let the other connections' pieces in between


@pytest.mark.parametrize("tls", [False, True])
async def test_responses_larger_than_the_shared_read_buffer_arrive_whole(
    serve: Any, certificate_authority: Any, tls: bool
) -> None:
    """Four connections read into one buffer, their pieces interleaved."""
    server_context, client_context, host = None, None, "127.0.0.1"
    if tls:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate_authority.issue_cert("localhost").configure_cert(server_context)
        client_context = ssl.create_default_context()
        certificate_authority.configure_trust(client_context)
        host = "localhost"
    server = await serve(_answer_big_in_pieces, server_context)
    port = server.url.rsplit(":", 1)[1]
    sender = BuiltinSender(4, verify=client_context or True)
    scheme = "https" if tls else "http"
    paths = [f"/connection-{n}" for n in range(4)]
    try:
        calls = (sender.send("GET", f"{scheme}://{host}:{port}{path}", {}, None, None) for path in paths)
        responses = await asyncio.wait_for(asyncio.gather(*calls), 10)  # a lost byte would hang
    finally:
        await sender.aclose()
    assert server.connections == 4
    for path, response in zip(paths, responses, strict=True):
        assert response.content == _big_body(f"GET {path} HTTP/1.1".encode())
