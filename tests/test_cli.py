"""The operator's interface as a user runs it: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from sqlalchemy import create_engine, inspect

ROOT = Path(__file__).resolve().parent.parent
ASSISTANT = Path(sys.executable).parent / "assistant"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env.update(
        ASSISTANT_DB_URL=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        HF_HUB_OFFLINE="1",
        **extra,
    )
    return env


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(ASSISTANT), "migrate"], env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    tables = inspect(create_engine(f"sqlite:///{tmp_path / 'cli.db'}")).get_table_names()
    assert {"users", "profiles", "turns", "behaviour_events"} <= set(tables)


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(ASSISTANT), "migrate"],
        env=_env(tmp_path, ASSISTANT_PORT="eighty"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "ASSISTANT_PORT='eighty' is not a number" in done.stderr
    assert "Traceback" not in done.stderr


def test_token_needs_a_secret_and_then_prints_one(tmp_path: Path) -> None:
    refused = subprocess.run(
        [str(ASSISTANT), "token", "cust-1"], env=_env(tmp_path), capture_output=True, text=True
    )
    assert refused.returncode == 2 and "ASSISTANT_WIDGET_SECRET" in refused.stderr
    issued = subprocess.run(
        [str(ASSISTANT), "token", "cust-1", "--tenant", "acme"],
        env=_env(tmp_path, ASSISTANT_WIDGET_SECRET="k"),
        capture_output=True,
        text=True,
    )
    assert issued.returncode == 0
    from assistant import verify_token

    claims = verify_token("k", issued.stdout.strip())
    assert getattr(claims, "external_id", None) == "cust-1"


def test_python_server_py_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    subprocess.run([str(ASSISTANT), "migrate"], env=_env(tmp_path), check=True, capture_output=True)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1", "--port", "0"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on ws://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()


def test_train_lists_trainers_and_passes_their_options(tmp_path: Path) -> None:
    listed = subprocess.run(
        [str(ASSISTANT), "train", "--help"], env=_env(tmp_path), capture_output=True, text=True
    )
    assert listed.returncode == 0 and "fusion" in listed.stdout and "speech" in listed.stdout
    fusion = subprocess.run(
        [str(ASSISTANT), "train", "fusion", "--help"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fusion.returncode == 0 and "--folds" in fusion.stdout


def test_re_fuse_on_a_fresh_database(tmp_path: Path) -> None:
    env = _env(tmp_path)
    subprocess.run([str(ASSISTANT), "migrate"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [str(ASSISTANT), "re-fuse"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("re-fused 0 profiles of 0 users")
