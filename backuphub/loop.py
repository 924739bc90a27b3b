"""Running a service: its coroutine on the fastest event loop available, its HTTP server
beside its consume loop."""

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import uvicorn

logger = logging.getLogger(__name__)

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed (Linux, macOS), else on asyncio's loop.

    uvloop takes noticeably less CPU per Kafka record and per HTTP request; uvicorn already
    picks it for the HTTP services, and the consumers get it from here.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - e.g. Windows, where uvloop does not build
        return asyncio.run(main)
    return uvloop.run(main)


class ServiceServer(uvicorn.Server):
    """The HTTP side of a service that has work of its own to finish when it is stopped.

    uvicorn, once ``serve()`` has returned after SIGTERM or SIGINT, raises the signal again so
    that the default action ends the process. That skips the caller's shutdown (a consumer
    leaving its group, a batch left uncommitted on purpose) and every restart then waits for
    the group session to expire. Here the signal only asks the server to stop, and the caller
    goes on with its own shutdown.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {number: signal.signal(number, self.handle_exit) for number in handled}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def service_server(app: Any, host: str, port: int) -> ServiceServer:
    """A ``ServiceServer`` for ``app`` with the project's logging (none of uvicorn's own)."""
    return ServiceServer(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    )


async def serve_beside(
    server: uvicorn.Server,
    worker: Coroutine[Any, Any, None],
    name: str,
    shutdown: Callable[[], Awaitable[None]],
) -> None:
    """Serve HTTP beside a service's ``worker`` (a consume loop) until the process is told to
    stop or the worker ends; then ``shutdown`` (which tells the worker to finish) and the
    worker's cancellation. A worker that died exits the process with 1, so that a supervisor
    (systemd, compose, Kubernetes) restarts it."""
    working = asyncio.create_task(worker)

    def stop_serving(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("worker stopped", extra={"worker": name}, exc_info=task.exception())
        server.should_exit = True

    working.add_done_callback(stop_serving)
    try:
        await server.serve()
    finally:
        crashed = working.done() and not working.cancelled() and working.exception() is not None
        await shutdown()
        working.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await working
    if crashed:
        raise SystemExit(1)
