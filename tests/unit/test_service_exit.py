"""A service whose worker dies exits non-zero, so that its supervisor restarts it."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from backuphub.settings import Settings
from processors.app import serve_processor
from processors.stream import ReportProcessor


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_processor_whose_loop_fails_exits_with_1(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(_self: ReportProcessor) -> None:
        raise RuntimeError("the loop broke")

    monkeypatch.setattr(ReportProcessor, "run", fail)

    with pytest.raises(SystemExit) as exited:
        asyncio.run(serve_processor(Settings.from_env({}), "127.0.0.1", _free_port()))

    assert exited.value.code == 1


def test_sigterm_lets_the_processor_shut_down_and_exit_0(tmp_path: Any) -> None:
    """uvicorn re-raises a caught SIGTERM once it has served, which would end the process
    before the processor's own shutdown; the service's server must not."""
    port = _free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_port()}",  # nothing listens there
        "BACKUPHUB_LOG_LEVEL": "WARNING",
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "backuphub.cli", "process", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            time.sleep(0.2)
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=20) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(timeout=10)
