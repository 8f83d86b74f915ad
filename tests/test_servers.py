"""The real servers the integration tests start (``tests/servers.py``) work as their docs say."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .servers import PostgresServer


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
