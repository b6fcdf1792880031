"""What the benchmarks share: percentiles, the machine they ran on, the server they start.

The server process itself is started by tests/support/server_process.py, the one spawner the
tests use too; here are the settings a benchmark gives it and the timed migration.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "RESULTS",
    "ROOT",
    "BenchError",
    "Machine",
    "bench_server_env",
    "cpu_model",
    "describe_machine",
    "load_average",
    "load_averages",
    "migrate_server_db",
    "percentile",
    "raise_file_limit",
    "usable_cores",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


class BenchError(RuntimeError):
    """The run could not complete; the message says why."""


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`th percentile (0 to 100) of `values`, interpolated linearly; NaN when empty."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# the machine


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str
    cores: int
    usable_cores: int
    torch_threads: int
    device: str
    torch: str
    python: str


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """The cores this process may run on (all of them where the system cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe_machine(device: str, torch_threads: int | None = None) -> Machine:
    """The machine, with the models' `device` (a CUDA device gets its name) and torch's thread
    count (its current one by default)."""
    import torch  # only the benchmarks that run models pay for it

    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name(device)})"
    return Machine(
        cpu=cpu_model(),
        cores=os.cpu_count() or 0,
        usable_cores=usable_cores(),
        torch_threads=torch.get_num_threads() if torch_threads is None else torch_threads,
        device=device,
        torch=torch.__version__,
        python=platform.python_version(),
    )


def raise_file_limit(needed: int) -> int:
    """Raise this process's open-file limit (servers it starts inherit it) as far as allowed;
    the new soft limit. BenchError when that is below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise BenchError(f"open-file limit {soft} is below the {needed} this run needs")
    return int(soft)


def load_averages() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages (NaN where the system has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)


def load_average() -> float:
    """The 1-minute load average (NaN where the system has none)."""
    return load_averages()[0]


# the server


def bench_server_env(db_url: str, device: str | None = None) -> dict[str, str]:
    """This process's environment for a server on `db_url` (models on `device`, else as
    ASSISTANT_DEVICE says) that one client address may drive as fast as it can: the message
    rate limits and the per-address connection cap are off."""
    return {
        **os.environ,
        "ASSISTANT_DB_URL": db_url,
        **({"ASSISTANT_DEVICE": device} if device is not None else {}),
        "ASSISTANT_RATE_CONNECTION_MESSAGES": "0",
        "ASSISTANT_RATE_USER_MESSAGES": "0",
        "ASSISTANT_MAX_CONNECTIONS_PER_IP": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def migrate_server_db(env: Mapping[str, str]) -> float:
    """`python server.py migrate` with `env`, as an operator runs it; the seconds it took."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "migrate"],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"server.py migrate failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - started
