"""The server as a separate process (`python server.py --port 0`), to kill, restart and measure.

Used by the crash-recovery tests and bench/soak.py. The process logs to a file (never to a
pipe nobody reads); its stdout says where it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0


class ServerProcess:
    def __init__(self, process: asyncio.subprocess.Process, url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls, db_url: str, log: Path, env: Mapping[str, str] | None = None
    ) -> ServerProcess:
        """Start a server on a free port of 127.0.0.1 and wait until it listens."""
        environment = {
            **os.environ,
            "ASSISTANT_DB_URL": db_url,
            "ASSISTANT_DEVICE": "cpu",
            "ASSISTANT_LOG_FORMAT": "text",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **(env or {}),
        }
        with log.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "server.py"),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                cwd=ROOT,
                env=environment,
                stdout=asyncio.subprocess.PIPE,
                stderr=sink,
            )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while line := (await process.stdout.readline()).decode():
                    if line.startswith("listening on "):
                        return cls(process, line.removeprefix("listening on ").strip(), log)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        await process.wait()
        raise RuntimeError(f"the server exited with {process.returncode}; see {log}")

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
