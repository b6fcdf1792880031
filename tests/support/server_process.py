"""The server as a separate process (`python server.py`), to kill, restart and measure.

The one way the tests and bench/ start a server process: the crash-recovery and cluster
tests, and bench/chat.py, load.py, soak.py and turn_timeline.py. The process logs to a file
(never to a pipe nobody reads); its stdout says where it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
SERVER = (sys.executable, str(ROOT / "server.py"))
START_TIMEOUT_S = 180.0
LISTENING = "listening on "


class ServerFailed(RuntimeError):
    """The server process did not start, or did not answer; the message ends with its log."""


def default_env(db_url: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with a server on `db_url`, CPU models, text logs, offline."""
    return {
        **os.environ,
        "ASSISTANT_DB_URL": db_url,
        "ASSISTANT_DEVICE": "cpu",
        "ASSISTANT_LOG_FORMAT": "text",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **(env or {}),
    }


class ServerProcess:
    def __init__(
        self, process: asyncio.subprocess.Process, log: Path, port: int, spawned: float
    ) -> None:
        self.process = process
        self.log = log
        self.port = port  # 0 until the server says where it listens
        self.spawned = spawned  # time.perf_counter() when the process was started
        self.url = f"ws://127.0.0.1:{port}" if port else ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def spawn(
        cls,
        env: Mapping[str, str],
        log: Path,
        *,
        port: int = 0,
        host: str | None = "127.0.0.1",
        cwd: Path = ROOT,
        program: Sequence[str] = SERVER,
    ) -> Self:
        """Start `program` (server.py, or a script that runs its main) on `port` (0: a free
        one) without waiting for it. `host` None leaves the address to ASSISTANT_HOST."""
        argv = [*program, *(("--host", host) if host is not None else ()), "--port", str(port)]
        with log.open("ab") as sink:
            spawned = time.perf_counter()
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=dict(env), stdout=asyncio.subprocess.PIPE, stderr=sink
            )
        return cls(process, log, port, spawned)

    @classmethod
    async def start(
        cls, db_url: str, log: Path, env: Mapping[str, str] | None = None
    ) -> ServerProcess:
        """A server on `db_url` on a free port of 127.0.0.1 (see `default_env`), listening."""
        server = await cls.spawn(default_env(db_url, env), log)
        try:
            await server.listening()
        except BaseException:
            await server.kill()
            raise
        return server

    def failed(self, why: str) -> ServerFailed:
        tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
        return ServerFailed(f"{why}; the end of {self.log}:\n{tail}")

    async def listening(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Wait for the line the server prints once everything, speech models too, is loaded;
        seconds since spawning. Sets `url` and `port`."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while line := (await stdout.readline()).decode():
                    if line.startswith(LISTENING):
                        self.url = line.removeprefix(LISTENING).strip()
                        self.port = int(self.url.rsplit(":", 1)[1])
                        return time.perf_counter() - self.spawned
        except TimeoutError:
            why = f"the server did not say it listens within {timeout_s:.0f} s"
            raise self.failed(why) from None
        await self.process.wait()
        raise self.failed(f"the server exited with {self.process.returncode}")

    async def ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Poll /readyz (the port must be known: given to `spawn`) until it answers 200;
        seconds since spawning."""
        deadline = self.spawned + timeout_s
        while time.perf_counter() < deadline:
            if self.process.returncode is not None:
                raise self.failed(f"the server exited with {self.process.returncode}")
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                status, _ = await http_get(self.port, "/readyz", timeout_s=2.0)
                if status == 200:
                    return time.perf_counter() - self.spawned
            await asyncio.sleep(0.02)
        raise self.failed(f"/readyz did not answer 200 within {timeout_s:.0f} s")

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after `timeout_s`); the exit status."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                return await self.process.wait()
        except TimeoutError:
            await self.kill()
            return -signal.SIGKILL


def free_port() -> int:
    """A port of 127.0.0.1 free now, for a server whose port must be known before it listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def server_process(
    env: Mapping[str, str], log: Path, *, host: str | None = "127.0.0.1", cwd: Path = ROOT
) -> AsyncIterator[ServerProcess]:
    """A listening server on a free port; killed if the caller leaves it running (normally
    it stops it with SIGTERM and checks the exit status)."""
    server = await ServerProcess.spawn(env, log, host=host, cwd=cwd)
    try:
        await server.listening()
        yield server
    finally:
        if server.process.returncode is None:
            await server.kill()


async def http_get(port: int, path: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """GET `path` from the server on 127.0.0.1:`port`: the status and the body."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer to GET {path}: {head[:80]!r}")
    return int(parts[1]), body
