"""A service whose worker dies exits non-zero, so that its supervisor restarts it."""

import asyncio
import socket

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
