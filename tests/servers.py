"""Real servers for integration tests, started on 127.0.0.1 in a temporary directory.

Each is found on the machine (Debian's ``redis-server``, ``tinyproxy``,
``postgresql``); where one is missing the test is skipped with the reason,
except under ``CI=true``, where it fails: ``.ci/run`` installs them (``scripts/install-servers.sh``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def need_binary(name: str, package: str) -> str:
    """The binary's path; skip (fail under CI=true) when the machine lacks it."""
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name, Path("/usr/sbin") / name) if p.exists()), None
    )
    if path is None:
        reason = f"{name} not found: install Debian's {package} package (scripts/install-servers.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; with CI=true this test is mandatory")
        pytest.skip(reason)
    return path


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    """Return once ``port`` accepts connections; raise if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {timeout:g}s")


class _Server:
    """A server process that can be stopped and started again on the same port."""

    what = "server"
    stop_signal = signal.SIGTERM
    stop_timeout = 5.0

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start (or restart) the server and wait until it listens."""
        log = open(self.folder / f"{self.what}.log", "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        log.close()
        wait_for_port(self.port, self.process, self.what)

    def stop(self) -> None:
        """Stop the server (its state is gone: nothing is persisted)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer(_Server):
    """``redis-server`` on 127.0.0.1, no persistence; ``url`` is ``redis://127.0.0.1:<port>/0``."""

    what = "redis-server"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.binary = need_binary("redis-server", "redis-server")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip


class TinyProxy(_Server):
    """A ``tinyproxy`` forward proxy on 127.0.0.1 that logs each request it forwards.

    It forwards and tunnels (``CONNECT``, to any port) to this machine only,
    named ``127.0.0.1`` or ``localhost`` (a TLS test server's certificate name);
    any other host is refused with a 403 before a lookup (a filter, denying by default).
    ``requests()`` returns the request lines it received (``GET http://...``,
    or ``CONNECT host:port`` for https), so a test can prove traffic went through it.
    """

    what = "tinyproxy"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.binary = need_binary("tinyproxy", "tinyproxy")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        config = self.folder / "tinyproxy.conf"
        hosts = self.folder / "tinyproxy.hosts"
        hosts.write_text("^(127\\.0\\.0\\.1|localhost)$\n")
        # No ConnectPort line: CONNECT to any port. The filter admits this machine alone.
        config.write_text(
            f"Port {self.port}\nListen {HOST}\nTimeout 30\nMaxClients 100\n"
            f'LogFile "{self.folder / "tinyproxy.requests.log"}"\nLogLevel Connect\n'
            "Allow 127.0.0.1\nDisableViaHeader Yes\n"
            f'Filter "{hosts}"\nFilterType ere\nFilterDefaultDeny Yes\n'
        )
        return [self.binary, "-d", "-c", str(config)]

    def requests(self) -> list[str]:
        log = self.folder / "tinyproxy.requests.log"
        if not log.exists():
            return []
        lines = log.read_text().splitlines()
        return [line.split("): ", 1)[1] for line in lines if "Request (file descriptor" in line]


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` (or ``initdb`` on PATH).

    Skips (fails under CI=true) when the machine has none.
    """
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).parent
    return Path(need_binary("initdb", "postgresql")).parent  # skips or fails with the reason


class PostgresServer(_Server):
    """A throwaway PostgreSQL on 127.0.0.1; ``url`` is ``postgresql://postgres@127.0.0.1:<port>/postgres``.

    The cluster is made with ``initdb`` (superuser ``postgres``, trust
    authentication, no Unix socket) in its own temporary directory, on first
    start; run as root, the server runs as the ``postgres`` user, which must
    own its data. Unlike Redis it keeps its data across :meth:`stop` and
    :meth:`start`; the data is removed when the ``with`` block ends (or the
    object is collected). ``fsync`` is off: a test server, never a crash test
    of the machine.
    """

    what = "postgres"
    stop_signal = signal.SIGINT  # a fast shutdown; the data stays for the next start()
    stop_timeout = 15.0

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.bin_dir = postgres_bin_dir()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.data_root = Path(tempfile.mkdtemp(prefix="ndax-pg-"))  # /tmp: reachable by the postgres user
        self._remove_data = weakref.finalize(self, shutil.rmtree, self.data_root, ignore_errors=True)
        self.data = self.data_root / "data"
        if self.user is not None:
            shutil.chown(self.data_root, user=self.user)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def command(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-c", f"listen_addresses={HOST}",
            "-c", "unix_socket_directories=",
            "-c", "fsync=off",
            "-c", "max_connections=200",
        ]  # fmt: skip

    def _run_as_owner(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as output:
            if self.user is None:
                return subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, cwd=self.data_root)
            return subprocess.Popen(  # as root: the postgres user and group, no root groups
                args,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.data_root,
                user=self.user,
                group=self.user,
                extra_groups=[],
            )

    def start(self) -> None:
        """Make the cluster (first time only), start the server, and wait until it accepts queries."""
        log = self.folder / f"{self.what}.log"
        if not (self.data / "PG_VERSION").exists():
            initdb = [
                str(self.bin_dir / "initdb"),
                "-D", str(self.data),
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]  # fmt: skip
            if self._run_as_owner(initdb, log).wait(60) != 0:
                raise RuntimeError(f"initdb failed; see {log}")
        self.process = self._run_as_owner(self.command(), log)
        wait_for_port(self.port, self.process, self.what, timeout=30)
        self._wait_until_ready(log)

    def _wait_until_ready(self, log: Path, timeout: float = 30.0) -> None:
        """Listening is not ready: PostgreSQL refuses connections until its startup ends."""
        assert self.process is not None
        ready = [str(self.bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-U", "postgres"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}; see {log}")
            if subprocess.run(ready, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not accept connections within {timeout:g}s; see {log}")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._remove_data()
