"""AOMEI Backupper: reading the run history that the backup software keeps per machine."""

from processors.aomei.brlog import (
    BrlogEntry,
    BrlogParseResult,
    ParseProblem,
    decode_brlog,
    detect_encoding,
    iter_brlog_entries,
    parse_brlog,
    parse_brlog_text,
)

__all__ = [
    "BrlogEntry",
    "BrlogParseResult",
    "ParseProblem",
    "decode_brlog",
    "detect_encoding",
    "iter_brlog_entries",
    "parse_brlog",
    "parse_brlog_text",
]
