#!/usr/bin/env python3
"""Wait until a Kafka broker answers a metadata request, or give up.

Used by deploy/local/kafka.sh (``start`` and ``wait``).  An open TCP port is not
proof that the broker is ready, so readiness here means: an aiokafka client
bootstraps and a full metadata request lists at least one broker.

Exit codes: 0 ready, 1 timed out, 2 aiokafka missing, 3 the watched broker
process (``--pid``) died while we waited.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time


def _parse_args(argv: list[str]) -> argparse.Namespace:
    default_servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or (
        "127.0.0.1:" + os.environ.get("KAFKA_PORT", "9092")
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap-servers",
        default=default_servers,
        help="comma-separated host:port list (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("KAFKA_WAIT_TIMEOUT", "120")),
        help="overall deadline in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--pid",
        type=int,
        default=None,
        help="broker process id: stop waiting at once if it exits",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser.parse_args(argv)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state too.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


async def _probe_once(servers: str, request_timeout_s: float) -> int:
    """Return the number of brokers in a fresh metadata response (raises on failure)."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=servers,
        request_timeout_ms=int(request_timeout_s * 1000),
        client_id="backuphub-wait-kafka",
    )
    try:
        await asyncio.wait_for(client.bootstrap(), request_timeout_s)
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), request_timeout_s)
        return len(metadata.brokers())
    finally:
        await client.close()


async def _wait(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    attempts = 0
    last_error = "no attempt made"
    while True:
        attempts += 1
        if args.pid is not None and not _alive(args.pid):
            print(
                f"wait_kafka: broker process {args.pid} exited before it became ready",
                file=sys.stderr,
            )
            return 3
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            brokers = await _probe_once(args.bootstrap_servers, min(5.0, max(remaining, 0.5)))
        except Exception as exc:
            text = str(exc).strip()
            name = type(exc).__name__
            last_error = text if text.startswith(name) else f"{name}: {text}".rstrip(": ")
        else:
            if brokers > 0:
                if not args.quiet:
                    print(
                        f"wait_kafka: {args.bootstrap_servers} is ready "
                        f"({brokers} broker(s), attempt {attempts})"
                    )
                return 0
            last_error = "metadata response listed no brokers"
        await asyncio.sleep(min(1.0, max(deadline - time.monotonic(), 0)))
    print(
        f"wait_kafka: TIMEOUT - no metadata from Kafka at {args.bootstrap_servers} "
        f"after {args.timeout:.0f} s ({attempts} attempts); last error: {last_error}",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import aiokafka  # noqa: F401
    except ImportError:
        print(
            f"wait_kafka: aiokafka is not installed for {sys.executable}; "
            "run scripts/dev/bootstrap.sh first",
            file=sys.stderr,
        )
        return 2
    # Connection refusals while the broker boots are expected; keep them off stderr.
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(_wait(args))


if __name__ == "__main__":
    sys.exit(main())
