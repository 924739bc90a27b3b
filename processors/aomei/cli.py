"""Command-line front end for the brlog parser: ``backuphub aomei parse PATH``.

Entries go to ``out`` as JSON lines, one per run, so they can be piped into other tools;
the account of problems goes to ``err`` so it never mixes with the data.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from typing import TextIO

from processors.aomei.brlog import (
    PROBLEM_DECODE,
    BrlogParseResult,
    iter_brlog_entries,
    normalise_task_id,
)

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNREADABLE = 2

# Problems listed one by one on err; the rest are only counted.
PROBLEMS_LISTED = 10


def parse_since(text: str) -> datetime:
    """Read the ``--since`` value: ISO 8601, ``Z`` accepted; raise ValueError otherwise.

    A value without an offset is left naive; the parser takes it as UTC.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty time")
    return datetime.fromisoformat(value)


def _unreadable_reason(path: str) -> str | None:
    """Say why path cannot be read as a file, before opening it; None if it looks fine."""
    if not os.path.lexists(path):
        return "no such file"
    if os.path.isdir(path):
        return "is a directory, not a brlog.xml file"
    if not os.path.isfile(path):
        return "is not a regular file"
    return None


def _not_a_brlog_reason(report: BrlogParseResult) -> str | None:
    """Say why a file read without any entry is not a brlog at all; None if it may be one.

    A blank file is an empty history (AOMEI may create it before the first run), so it is
    accepted; bytes that hold no brlog tag, or that could not be decoded, are not.
    """
    if report.entry_count > 0 or report.blank:
        return None
    if not report.recognised:
        return "is not an AOMEI brlog.xml (no <BRLog> or <Log> element found)"
    if any(problem.kind == PROBLEM_DECODE for problem in report.problems):
        return f"could not be decoded as {report.encoding}; no entry read"
    return None


def write_problem_summary(path: str, report: BrlogParseResult, err: TextIO) -> None:
    """Write a short account of problems and truncation to err; nothing if all was fine."""
    if report.blank:
        err.write(f"{path}: empty file, no entries\n")
        return
    if not report.problem_count and not report.truncated:
        return

    entries = "entry" if report.entry_count == 1 else "entries"
    problems = "problem" if report.problem_count == 1 else "problems"
    line = f"{path}: {report.entry_count} {entries} read, {report.problem_count} {problems}"
    if report.truncated:
        line += "; file ends early (probably copied while AOMEI was writing it)"
    err.write(line + "\n")

    for problem in report.problems[:PROBLEMS_LISTED]:
        err.write(f"  - {problem.describe()}\n")
    hidden = report.problem_count - min(len(report.problems), PROBLEMS_LISTED)
    if hidden > 0:
        err.write(f"  ... and {hidden} more\n")


def run_parse(
    path: str, *, since: str | None, task_id: str | None, out: TextIO, err: TextIO
) -> int:
    """Print each entry of the brlog at path as a JSON line; return the exit status.

    Returns 0 when the file was read, even if some entries had problems (they are
    summarised on err), and 2 with a message on err when the arguments are wrong or the
    file cannot be read as a brlog at all.
    """
    since_time: datetime | None = None
    if since is not None:
        try:
            since_time = parse_since(since)
        except ValueError:
            err.write(f"error: --since {since!r} is not an ISO 8601 time, e.g. 2025-11-01T00:00Z\n")
            return EXIT_UNREADABLE

    if task_id is not None:
        try:
            normalise_task_id(task_id)
        except ValueError:
            err.write(f"error: --task-id {task_id!r} is not a task GUID\n")
            return EXIT_UNREADABLE

    reason = _unreadable_reason(path)
    if reason is not None:
        logger.warning("brlog %s not read: %s", path, reason)
        err.write(f"error: cannot read {path}: {reason}\n")
        return EXIT_UNREADABLE

    report = BrlogParseResult()
    try:
        for entry in iter_brlog_entries(path, since=since_time, task_id=task_id, report=report):
            out.write(json.dumps(entry.to_json_dict(), ensure_ascii=False) + "\n")
    except OSError as error:
        logger.warning("brlog %s not read: %s", path, error)
        err.write(f"error: cannot read {path}: {error.strerror or error}\n")
        return EXIT_UNREADABLE

    reason = _not_a_brlog_reason(report)
    if reason is not None:
        logger.warning("brlog %s rejected: %s", path, reason)
        err.write(f"error: {path} {reason}\n")
        return EXIT_UNREADABLE

    write_problem_summary(path, report, err)
    return EXIT_OK
