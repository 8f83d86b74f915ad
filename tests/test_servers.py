"""The real servers the integration tests start (``tests/servers.py``) work as their docs say."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from .servers import HOST, PostgresServer, TinyProxy


def _psql(server: PostgresServer, sql: str) -> str:
    result = subprocess.run(
        [str(server.bin_dir / "psql"), server.url, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def test_postgres_accepts_its_url_keeps_data_across_a_restart_and_cleans_up(tmp_path: Path) -> None:
    with PostgresServer(tmp_path) as server:
        assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        _psql(server, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        server.stop()
        assert server.process is None
        server.start()
        assert _psql(server, "SELECT n FROM kept") == "7"
        assert _psql(server, "SHOW listen_addresses") == "127.0.0.1"
        data = server.data_root
    assert not data.exists()


def _connect_through(proxy: TinyProxy, target: str) -> str:
    """The proxy's status line for ``CONNECT target``."""
    with socket.create_connection((HOST, proxy.port), timeout=10) as conn:
        conn.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return conn.makefile("rb").readline().decode().strip()


def test_tinyproxy_tunnels_to_any_port_on_this_machine_and_nowhere_else(tmp_path: Path) -> None:
    with socket.create_server((HOST, 0)) as listener, TinyProxy(tmp_path) as proxy:
        port = listener.getsockname()[1]  # a free port, not 443
        assert _connect_through(proxy, f"{HOST}:{port}").split()[1] == "200"
        assert _connect_through(proxy, f"localhost:{port}").split()[1] == "200"
        # Any other host is refused by name: no lookup, no connection (.invalid never resolves).
        assert _connect_through(proxy, f"example.invalid:{port}").split()[1] == "403"
        assert f"CONNECT {HOST}:{port} HTTP/1.1" in proxy.requests()
