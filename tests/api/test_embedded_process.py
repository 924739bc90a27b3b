"""The embedded service as a user starts it: one process, its own key, durable on a 200."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backuphub.cli import main


@pytest.fixture(autouse=True)
def keep_test_logging(monkeypatch):
    """``main`` points the root logger at the stderr of the moment, which pytest swaps and
    closes; later tests would then log into a closed file."""
    monkeypatch.setattr("backuphub.logs.configure_logging", lambda level="INFO": None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_serve(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BACKUPHUB_HOME": str(home)}
    for name in ("AOMEI_API_KEYS", "AOMEI_API_KEY", "BACKUPHUB_JWT_SECRET", "DATABASE_URL"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "backuphub.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("backuphub serve did not become healthy within 30 s")


def test_a_report_answered_200_survives_kill_9(tmp_path):
    port = free_port()
    server = start_serve(tmp_path, port)
    key = (tmp_path / "api_key").read_text().strip()
    base = f"http://127.0.0.1:{port}/api/v1/aomei"
    headers = {"X-API-Key": key}

    try:
        register = httpx.post(
            f"{base}/register", json={"job_id": 0, "task_name": "Nightly"}, headers=headers
        )
        job_id = register.json()["data"]["job_id"]
        status = httpx.post(
            f"{base}/status",
            headers=headers,
            json={
                "job_id": job_id,
                "status": "failed",
                "error_message": "disk full",
                "end_time": "2025-11-02T02:00:00",
            },
        )
        assert status.status_code == 200
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)

    assert server.stdout is not None
    banner = server.stdout.read().decode()
    assert key in banner
    assert "backuphub token" in banner

    server = start_serve(tmp_path, port)
    try:
        token = subprocess.run(
            [sys.executable, "-m", "backuphub.cli", "token", "--subject", "t"],
            env={**os.environ, "BACKUPHUB_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        detail = httpx.get(f"{base}/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
    finally:
        server.terminate()
        server.wait(timeout=10)

    latest = detail.json()["data"]["latest_execution"]
    assert latest["result"] == "failed"
    assert latest["error"] == "disk full"


@pytest.mark.parametrize("command", ["ingest", "persist", "migrate"])
def test_a_distributed_service_without_its_secrets_refuses_to_start(command, monkeypatch, capsys):
    for name in ("AOMEI_API_KEYS", "AOMEI_API_KEY", "BACKUPHUB_JWT_SECRET", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)

    assert main([command]) == 2
    assert "missing configuration" in capsys.readouterr().err


def test_a_token_is_never_signed_with_a_secret_no_server_knows(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BACKUPHUB_HOME", str(tmp_path / "nowhere"))
    monkeypatch.delenv("BACKUPHUB_JWT_SECRET", raising=False)

    assert main(["token", "--subject", "me"]) == 2
    assert "no JWT secret" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_serve_on_a_taken_port_says_so_before_any_setup(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BACKUPHUB_HOME", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        assert main(["serve", "--port", str(port)]) == 2

    assert "choose another port" in capsys.readouterr().err
    assert not (tmp_path / "backuphub.db").exists()


def test_a_port_that_is_not_a_number_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("PORT", "abc")

    assert main(["serve"]) == 2
    assert "PORT must be a port number" in capsys.readouterr().err
