"""Parser for AOMEI Backupper's run history file, ``brlog.xml``.

AOMEI appends one ``<Log ID="{task GUID}">`` element per run to a single file shared by
every task of a machine. The file is often read while AOMEI is still appending to it, may
be re-encoded by the scripts that ship it to us, and can carry damage. The parser is built
around that:

* the encoding is taken from the byte-order mark or from the NUL pattern of the bytes,
  never from the XML declaration, which a re-encoding copy can leave stale;
* a scanner cuts the text into ``<Log>...</Log>`` chunks and each chunk is parsed on its
  own, so a damaged entry costs only itself and a cut-off last entry is simply reported;
* status comes from the numeric ``ResultCode`` only, because ``Result`` and ``Operation``
  are written in the language of the user interface;
* problems are collected as :class:`ParseProblem` records instead of raising, so a report
  is produced for every file that is a brlog at all.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from xml.parsers import expat

logger = logging.getLogger(__name__)

STATUS_SUCCESS: Final = "success"
STATUS_FAILED: Final = "failed"
STATUS_WARNING: Final = "warning"

# Kinds of ParseProblem, stable strings for callers that count or filter them.
PROBLEM_DECODE: Final = "decode"
PROBLEM_MALFORMED: Final = "malformed"
PROBLEM_MISSING_FIELD: Final = "missing-field"
PROBLEM_BAD_VALUE: Final = "bad-value"
PROBLEM_TRUNCATED: Final = "truncated"
PROBLEM_TOO_LARGE: Final = "too-large"

# Bytes looked at to guess an encoding without a byte-order mark.
DETECT_SAMPLE_BYTES: Final = 4096
# Bytes read per step by iter_brlog_entries. Measured: 16 KiB is as fast as 64 KiB, and
# keeps the decoded pieces small enough that the C allocator's heap stays flat (with
# 64 KiB pieces of UTF-8 text, resident memory crept up by ~10 MB before levelling off).
READ_CHUNK_BYTES: Final = 16 * 1024
# A real entry is well under 1 KiB; anything this large is damage and is skipped so that
# memory stays bounded.
MAX_ENTRY_CHARS: Final = 1_000_000
# Problems kept per parse; further ones are only counted, so a damaged file of millions
# of entries cannot exhaust memory through its problem list.
MAX_KEPT_PROBLEMS: Final = 1000

# Largest epoch second that still formats as a four-digit year (9999-12-31T23:59:59Z).
_MAX_EPOCH: Final = 253_402_300_799

_BOMS: Final = (
    (codecs.BOM_UTF8, "utf-8-sig", "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16-be"),
)

# Invisible marks that Windows dialogs leave in copied names: LRM, RLM, ALM, the
# embedding/override marks, the isolates, a stray BOM and the zero-width space.
_INVISIBLE_MARKS: Final = dict.fromkeys(
    [0x200B, 0x200E, 0x200F, 0x061C, 0xFEFF, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)
# No-break spaces (plain, narrow as used by French Windows, figure) read as plain spaces.
_NAME_TRANSLATION: Final[dict[int, int | None]] = {
    **_INVISIBLE_MARKS,
    0x00A0: 0x20,
    0x202F: 0x20,
    0x2007: 0x20,
}

_GUID_RE: Final = re.compile(
    r"\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?"
)
_EPOCH_RE: Final = re.compile(r"[0-9]{1,20}")
_CODE_RE: Final = re.compile(r"[+-]?[0-9]{1,20}")

# What the scanner stops at: entry and root tags, and the two constructs whose content
# must not be mistaken for tags.
_TOKEN_RE: Final = re.compile(
    r"<Log(?=[\s/>])|</Log\s*>|<BRLog(?=[\s/>])|</BRLog\s*>|<!--|<!\[CDATA\["
)
_CONTENT_RE: Final = re.compile(r"[^ \t\r\n\0\ufeff]")
# Characters kept at the end of the buffer between reads so that a tag split across two
# reads is still found.
_TOKEN_TAIL: Final = 16
_BLANK_CHARS: Final = " \t\r\n\0\ufeff"


@dataclass(frozen=True, slots=True)
class BrlogEntry:
    """One run of one AOMEI task, as recorded by a ``<Log>`` element.

    ``task_id`` (the task's GUID) identifies the task; ``task_name`` is what the user called
    it at the time of the run and may change. ``status`` is derived from ``result_code``
    alone. The file holds no size, duration, destination or end time, so neither does this.
    """

    task_id: str
    task_name: str
    time: str
    operation: str | None
    result: str | None
    result_code: int | None
    status: str
    detail: str | None
    epoch: int

    @classmethod
    def build(
        cls,
        *,
        task_id: str,
        task_name: str,
        epoch: int,
        operation: str | None,
        result: str | None,
        result_code: int | None,
        detail: str | None,
    ) -> BrlogEntry:
        """Create an entry whose ``time`` and ``status`` are derived from epoch and code.

        Deriving them here keeps the two views of the same fact from disagreeing.
        """
        return cls(
            task_id=task_id,
            task_name=task_name,
            time=format_epoch(epoch),
            operation=operation,
            result=result,
            result_code=result_code,
            status=status_for_code(result_code),
            detail=detail,
            epoch=epoch,
        )

    def to_json_dict(self) -> dict[str, str | int | None]:
        """Return the entry in the shape and key order of the JSON lines we publish."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "time": self.time,
            "operation": self.operation,
            "result": self.result,
            "result_code": self.result_code,
            "status": self.status,
            "detail": self.detail,
        }


@dataclass
class ParseProblem:
    """Something in the file that could not be turned into an entry, or was doubtful.

    ``entry_index`` counts ``<Log>`` elements in file order from 0 (None for problems of
    the whole file). ``line`` is 1-based in the decoded text. ``char_offset`` is the
    position in the decoded text; ``byte_offset`` is set for problems found in the raw
    bytes (decoding).
    """

    kind: str
    reason: str
    entry_index: int | None = None
    line: int | None = None
    char_offset: int | None = None
    byte_offset: int | None = None

    def describe(self) -> str:
        """Return a one-line, human-readable account of the problem and where it is."""
        where: list[str] = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.entry_index is not None:
            where.append(f"<Log> #{self.entry_index + 1}")
        if self.byte_offset is not None:
            where.append(f"byte {self.byte_offset}")
        prefix = ", ".join(where) if where else "file"
        return f"{prefix}: {self.reason}"


@dataclass
class BrlogParseResult:
    """The outcome of reading one brlog: entries in file order and what went wrong.

    ``truncated`` is True when the file ends before its root element is closed or in the
    middle of an entry, which is what a copy taken while AOMEI appends looks like.
    ``recognised`` is True when at least one ``<Log>`` or ``<BRLog>`` tag was seen, and
    ``blank`` when the input holds nothing but whitespace, NUL bytes or a byte-order mark;
    together they tell an empty history apart from a file that is not a brlog.
    ``entry_count`` counts the entries read, also those a filter dropped and those not
    kept in ``entries`` by streaming readers. ``omitted_problems`` counts problems beyond
    :data:`MAX_KEPT_PROBLEMS`.
    """

    entries: list[BrlogEntry] = field(default_factory=list)
    problems: list[ParseProblem] = field(default_factory=list)
    encoding: str = ""
    truncated: bool = False
    recognised: bool = False
    blank: bool = False
    entry_count: int = 0
    omitted_problems: int = 0

    def add_problem(self, problem: ParseProblem) -> None:
        """Keep the problem, or only count it once :data:`MAX_KEPT_PROBLEMS` are kept."""
        logger.debug("brlog problem (%s): %s", problem.kind, problem.describe())
        if len(self.problems) < MAX_KEPT_PROBLEMS:
            self.problems.append(problem)
        else:
            self.omitted_problems += 1

    @property
    def problem_count(self) -> int:
        """Number of problems found, kept or not."""
        return len(self.problems) + self.omitted_problems


def format_epoch(epoch: int) -> str:
    """Format epoch seconds as ISO 8601 UTC with ``Z``, never through local time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def status_for_code(result_code: int | None) -> str:
    """Map a ResultCode to a status: 0 success, other integers failed, none warning."""
    if result_code is None:
        return STATUS_WARNING
    return STATUS_SUCCESS if result_code == 0 else STATUS_FAILED


def normalise_task_id(value: str) -> str:
    """Return a task GUID in lower case without braces; raise ValueError if not a GUID."""
    match = _GUID_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a task GUID: {value[:60]!r}")
    return match.group(1).lower()


def clean_name(text: str) -> str:
    """Drop invisible direction marks, read no-break spaces as spaces, and trim."""
    return text.translate(_NAME_TRANSLATION).strip()


def _bom_length(data: bytes) -> int:
    """Return the length of the byte-order mark at the start of data, 0 if none."""
    for bom, _label, _codec in _BOMS:
        if data.startswith(bom):
            return len(bom)
    return 0


def detect_encoding(data: bytes) -> str:
    """Tell the encoding of brlog bytes from the byte-order mark or the NUL pattern.

    The XML declaration is not trusted: a script that re-encodes the file while copying it
    need not rewrite the declaration. Returns the Python codec name to decode the data
    with: ``utf-8-sig``, ``utf-8``, ``utf-16-le`` or ``utf-16-be`` (with the UTF-16
    codecs a byte-order mark stays in the text as U+FEFF; :func:`decode_brlog` drops it).
    Without a mark, markup is ASCII, so UTF-16 shows as NUL bytes at every odd (little
    endian) or every even (big endian) position; anything else is read as UTF-8.
    """
    for bom, label, _codec in _BOMS:
        if data.startswith(bom):
            return label

    # Only byte pairs with exactly one NUL speak for UTF-16: NUL padding (a pair of two
    # NULs) says nothing about the text around it.
    sample = data[:DETECT_SAMPLE_BYTES]
    low_nul = high_nul = text_pairs = 0
    for first, second in zip(sample[0::2], sample[1::2], strict=False):
        if first or second:
            text_pairs += 1
            low_nul += second == 0 and first != 0
            high_nul += first == 0 and second != 0
    least = max(2, text_pairs // 10)
    if low_nul >= least and low_nul > 2 * high_nul:
        return "utf-16-le"
    if high_nul >= least and high_nul > 2 * low_nul:
        return "utf-16-be"
    return "utf-8"


def _codec_for(label: str) -> str:
    """Return the codec that decodes the bytes after the byte-order mark."""
    return "utf-8" if label == "utf-8-sig" else label


class _StreamDecoder:
    """Decode brlog bytes piece by piece, reporting undecodable bytes instead of failing.

    Strict decoding finds the first bad byte so it can be reported with its offset; the
    same piece is then decoded again with replacement characters (a failed call leaves
    the decoder's state untouched). An incomplete character at the very end is the mark
    of a copy cut while being written, or of NUL padding, not of a wrong encoding.
    """

    def __init__(self, label: str, report: BrlogParseResult) -> None:
        self._decoder = codecs.getincrementaldecoder(_codec_for(label))(errors="strict")
        self._report = report
        self._label = label
        self._reported = False

    def decode(self, data: bytes, *, start_offset: int) -> str:
        """Decode the next piece; start_offset is its position in the file, in bytes."""
        pending = len(getattr(self._decoder, "buffer", b""))
        try:
            return self._decoder.decode(data)
        except UnicodeDecodeError as error:
            self._report_error(error, start_offset - pending)
            self._decoder.errors = "replace"
            text = self._decoder.decode(data)
            self._decoder.errors = "strict"
            return text

    def finish(self) -> str:
        """Flush the decoder at the end of the input.

        Bytes left over here are an incomplete last character: NUL padding is dropped,
        anything else becomes one U+FFFD inside the entry that the copy cut off.
        """
        try:
            return self._decoder.decode(b"", True)
        except UnicodeDecodeError as error:
            self._decoder.reset()
            return "\ufffd" if error.object[error.start :].strip(b"\0") else ""

    def _report_error(self, error: UnicodeDecodeError, base: int) -> None:
        """Report the first undecodable stretch; later ones add nothing useful."""
        if self._reported:
            return
        self._reported = True
        self._report.add_problem(
            ParseProblem(
                kind=PROBLEM_DECODE,
                reason=(
                    f"bytes not valid {self._label} ({error.reason}); "
                    "undecodable bytes replaced with U+FFFD"
                ),
                byte_offset=base + error.start,
            )
        )


def decode_brlog(data: bytes) -> str:
    """Decode brlog bytes to text, dropping the byte-order mark, replacing bad bytes."""
    label = detect_encoding(data)
    return data[_bom_length(data) :].decode(_codec_for(label), errors="replace")


@dataclass
class _Chunk:
    """The text of one ``<Log>`` element and where it starts."""

    text: str
    entry_index: int
    line: int
    char_offset: int


class _LogScanner:
    """Cut brlog text into ``<Log>`` element chunks without parsing the whole document.

    Text is fed in pieces; only the unfinished entry (or a short tail) is kept between
    pieces, so memory does not grow with the file. A ``<Log>`` that is opened again
    before it is closed loses only itself; a stray ``</Log>`` is reported; comments and
    CDATA sections are stepped over so their content is not mistaken for tags.
    """

    def __init__(self, report: BrlogParseResult) -> None:
        self._report = report
        self._buf = ""
        self._pos = 0
        self._base = 0
        self._entry_start: int | None = None
        self._entry_index = -1
        self._closer: str | None = None
        self._skipping_oversized = False
        self._root_open = False
        self._root_closed = False
        self._line = 1
        self._lines_to = 0
        self.blank = True

    def feed(self, text: str) -> Iterator[_Chunk]:
        """Take the next piece of text and yield the entries it completes."""
        if self.blank and _CONTENT_RE.search(text) is not None:
            self.blank = False

        keep = self._pos if self._entry_start is None else self._entry_start
        if keep > 0:
            self._count_lines(self._base + keep)
            self._buf = self._buf[keep:] + text
            self._base += keep
            self._pos -= keep
            if self._entry_start is not None:
                self._entry_start -= keep
        else:
            self._buf += text

        yield from self._scan(final=False)

    def close(self) -> Iterator[_Chunk]:
        """Signal the end of the text; yield what is left and note a cut-off end."""
        yield from self._scan(final=True)

    def _count_lines(self, upto: int) -> None:
        """Advance the line counter to absolute offset upto (offsets only increase)."""
        if upto > self._lines_to:
            start = self._lines_to - self._base
            self._line += self._buf.count("\n", max(start, 0), upto - self._base)
            self._lines_to = upto

    def _line_at(self, index: int) -> int:
        """Return the 1-based line of buffer index, which must not precede earlier calls."""
        self._count_lines(self._base + index)
        return self._line

    def _problem(self, kind: str, reason: str, index: int, *, entry: bool = True) -> None:
        """Record a problem located at buffer index."""
        self._report.add_problem(
            ParseProblem(
                kind=kind,
                reason=reason,
                entry_index=self._entry_index if entry else None,
                line=self._line_at(index),
                char_offset=self._base + index,
            )
        )

    def _scan(self, *, final: bool) -> Iterator[_Chunk]:
        """Walk the buffer from the scan position, yielding each completed entry."""
        buf = self._buf
        # Every step advances the position or leaves an entry; twice the remaining length
        # (plus a margin) therefore bounds the loop.
        for _step in range(2 * (len(buf) - self._pos) + 8):
            if self._closer is not None:
                end = buf.find(self._closer, self._pos)
                if end < 0:
                    self._wait_for_closer(final)
                    return
                self._pos = end + len(self._closer)
                self._closer = None
                continue

            match = _TOKEN_RE.search(buf, self._pos)
            if match is None:
                self._wait_for_token(final)
                return

            token = match.group()
            if token.startswith("<!"):
                self._closer = "-->" if token == "<!--" else "]]>"
                self._pos = match.end()
            elif self._entry_start is None:
                wait, chunk = self._outside_entry(token, match, final)
                if chunk is not None:
                    yield chunk
                if wait:
                    return
            else:
                chunk = self._inside_entry(token, match)
                if chunk is not None:
                    yield chunk
        raise RuntimeError("brlog scanner made no progress")  # pragma: no cover

    def _outside_entry(
        self, token: str, match: re.Match[str], final: bool
    ) -> tuple[bool, _Chunk | None]:
        """Handle a token between entries; return (wait for more text, finished chunk)."""
        if token == "<Log":
            return self._open_entry(match, final)

        if token == "<BRLog":
            self._report.recognised = True
            self._root_open = True
        elif token.startswith("</BRLog"):
            self._root_closed = True
        elif not self._skipping_oversized:
            self._problem(
                PROBLEM_MALFORMED,
                "</Log> without an opening <Log>; the text before it was skipped",
                match.start(),
                entry=False,
            )
        self._pos = match.end()
        return False, None

    def _open_entry(self, match: re.Match[str], final: bool) -> tuple[bool, _Chunk | None]:
        """Start an entry at a ``<Log`` token once its start tag is complete."""
        buf = self._buf
        self._report.recognised = True
        self._skipping_oversized = False
        end_of_tag = buf.find(">", match.end())
        if end_of_tag < 0 and not final:
            if len(buf) - match.start() <= MAX_ENTRY_CHARS:
                self._pos = match.start()
                return True, None
            self._entry_index += 1
            self._problem(PROBLEM_TOO_LARGE, "<Log> start tag never ends; skipped", match.start())
            self._pos = match.end()
            return False, None

        self._entry_index += 1
        self._entry_start = match.start()
        if end_of_tag < 0:
            self._cut_off()
            return False, None

        self._pos = end_of_tag + 1
        if buf[end_of_tag - 1] != "/":
            return False, None
        self._entry_start = None
        return False, self._chunk(match.start(), self._pos)

    def _inside_entry(self, token: str, match: re.Match[str]) -> _Chunk | None:
        """Handle a token inside an open entry: its end, or a sign that it was never closed."""
        start = self._entry_start
        assert start is not None
        if token.startswith("</Log"):
            self._entry_start = None
            self._pos = match.end()
            return self._chunk(start, self._pos)

        name = token.strip("</> \t\r\n")
        tag = f"</{name}>" if token.startswith("</") else f"<{name}>"
        self._problem(
            PROBLEM_MALFORMED,
            f"entry never closed: {tag} found before its </Log>; entry skipped",
            start,
        )
        self._entry_start = None
        self._pos = match.start()
        return None

    def _chunk(self, start: int, end: int) -> _Chunk:
        """Package buffer[start:end] as the current entry's chunk."""
        return _Chunk(
            text=self._buf[start:end],
            entry_index=self._entry_index,
            line=self._line_at(start),
            char_offset=self._base + start,
        )

    def _wait_for_token(self, final: bool) -> None:
        """No token left in the buffer: keep what may still be needed, or finish."""
        if final:
            self._finish()
            return

        if self._entry_start is None:
            self._pos = max(self._pos, len(self._buf) - _TOKEN_TAIL)
        else:
            self._limit_entry_size()

    def _wait_for_closer(self, final: bool) -> None:
        """Inside a comment or CDATA without its end in the buffer."""
        if final:
            self._closer = None
            self._finish()
            return

        if self._entry_start is None:
            self._pos = max(self._pos, len(self._buf) - _TOKEN_TAIL)
        else:
            self._limit_entry_size()

    def _limit_entry_size(self) -> None:
        """Give up on an entry that has grown beyond any real one, to bound memory."""
        start = self._entry_start
        if start is None or len(self._buf) - start <= MAX_ENTRY_CHARS:
            return

        self._problem(
            PROBLEM_TOO_LARGE,
            f"entry longer than {MAX_ENTRY_CHARS} characters without </Log>; skipped",
            start,
        )
        self._entry_start = None
        self._closer = None
        self._skipping_oversized = True
        self._pos = len(self._buf) - _TOKEN_TAIL

    def _finish(self) -> None:
        """At the end of the text, note an entry or tag cut off by a copy mid-write."""
        if self._entry_start is not None:
            self._cut_off()
            return

        leftover = self._buf[self._pos :].strip(_BLANK_CHARS)
        cut_in_tag = leftover.startswith("<") and ">" not in leftover
        if (self._root_open and not self._root_closed) or cut_in_tag:
            self._report.truncated = True

    def _cut_off(self) -> None:
        """Report the open entry as cut off by the end of the file."""
        start = self._entry_start
        assert start is not None
        self._report.truncated = True
        self._problem(
            PROBLEM_TRUNCATED,
            "entry cut off by the end of the file (AOMEI was probably still writing it)",
            start,
        )
        self._entry_start = None
        self._pos = len(self._buf)


def _local_name(name: str) -> str:
    """Return an element or attribute name without namespace prefix, in lower case."""
    if ":" in name:
        name = name.rsplit(":", 1)[-1]
    return name.lower()


class _LogElementReader:
    """Read one ``<Log>`` chunk with expat into its attributes and its children's text.

    Only what an entry needs is kept: the attributes of ``<Log>`` and, per direct child,
    all the text inside it (markup nested in a child is read through, attributes of a
    child such as those of ``<Detail>`` are ignored). The first of repeated children
    wins. Names are compared without namespace prefix and case, to be lenient with
    writers other than AOMEI's own. Building no element tree makes this several times
    faster than ElementTree, which matters for histories of 100,000 runs.
    """

    def __init__(self) -> None:
        self.attributes: dict[str, str] = {}
        self.fields: dict[str, str] = {}
        self._depth = 0
        self._child: str | None = None
        self._parts: list[str] = []
        parser = expat.ParserCreate()
        parser.buffer_text = True
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        self._parser: expat.XMLParserType | None = parser

    def read(self, text: str) -> None:
        """Parse the chunk; raises expat.ExpatError when it is not well-formed.

        A reader serves one chunk. The parser is dropped afterwards: its handlers point
        back at the reader, and the cycle would otherwise wait for the garbage collector.
        """
        parser = self._parser
        if parser is None:
            raise RuntimeError("a _LogElementReader reads one chunk only")
        self._parser = None
        parser.Parse(text, True)

    def _start(self, name: str, attributes: dict[str, str]) -> None:
        self._depth += 1
        if self._depth == 1:
            self.attributes = {_local_name(key): value for key, value in attributes.items()}
        elif self._depth == 2:
            self._child = _local_name(name)
            self._parts = []

    def _end(self, _name: str) -> None:
        if self._depth == 2 and self._child is not None:
            self.fields.setdefault(self._child, "".join(self._parts))
            self._child = None
        self._depth -= 1

    def _text(self, data: str) -> None:
        if self._child is not None:
            self._parts.append(data)


def _field_text(fields: dict[str, str], name: str) -> str | None:
    """Return the trimmed text of a child element; None when absent or empty."""
    text = fields.get(name)
    if text is None:
        return None
    text = text.strip()
    return text or None


def _entry_from_chunk(chunk: _Chunk, report: BrlogParseResult) -> BrlogEntry | None:
    """Turn one ``<Log>`` chunk into an entry, or record why it cannot be one."""

    def problem(kind: str, reason: str) -> None:
        report.add_problem(
            ParseProblem(
                kind=kind,
                reason=reason,
                entry_index=chunk.entry_index,
                line=chunk.line,
                char_offset=chunk.char_offset,
            )
        )

    reader = _LogElementReader()
    try:
        reader.read(chunk.text)
    except expat.ExpatError as error:
        problem(
            PROBLEM_MALFORMED,
            f"entry is not well-formed XML ({expat.ErrorString(error.code)} at line "
            f"{chunk.line + error.lineno - 1}, column {error.offset + 1}); entry skipped",
        )
        return None
    fields = reader.fields

    raw_id = reader.attributes.get("id")
    if raw_id is None or not raw_id.strip():
        problem(PROBLEM_MISSING_FIELD, "entry has no ID attribute (task GUID); entry skipped")
        return None
    try:
        task_id = normalise_task_id(raw_id)
    except ValueError:
        problem(PROBLEM_BAD_VALUE, f"ID {raw_id[:60]!r} is not a task GUID; entry skipped")
        return None

    raw_time = _field_text(fields, "time")
    if raw_time is None:
        problem(PROBLEM_MISSING_FIELD, "entry has no Time; entry skipped")
        return None
    time_text = clean_name(raw_time)
    if _EPOCH_RE.fullmatch(time_text) is None:
        problem(PROBLEM_BAD_VALUE, f"Time {raw_time[:40]!r} is not epoch seconds; entry skipped")
        return None
    epoch = int(time_text)
    if epoch > _MAX_EPOCH:
        problem(PROBLEM_BAD_VALUE, f"Time {epoch} is beyond the year 9999; entry skipped")
        return None

    raw_name = _field_text(fields, "task")
    task_name = clean_name(raw_name) if raw_name is not None else ""
    if not task_name:
        problem(PROBLEM_MISSING_FIELD, "entry has no Task name; kept with an empty name")

    code_text = _field_text(fields, "resultcode")
    result_code: int | None = None
    if code_text is not None:
        code_text = clean_name(code_text)
        if _CODE_RE.fullmatch(code_text) is not None:
            result_code = int(code_text)

    return BrlogEntry.build(
        task_id=task_id,
        task_name=task_name,
        epoch=epoch,
        operation=_field_text(fields, "operation"),
        result=_field_text(fields, "result"),
        result_code=result_code,
        detail=_field_text(fields, "detail"),
    )


def _entries_from_texts(texts: Iterable[str], report: BrlogParseResult) -> Iterator[BrlogEntry]:
    """Scan text pieces in order and yield the entries found, recording problems."""
    scanner = _LogScanner(report)
    for text in texts:
        for chunk in scanner.feed(text):
            entry = _entry_from_chunk(chunk, report)
            if entry is not None:
                report.entry_count += 1
                yield entry
    for chunk in scanner.close():
        entry = _entry_from_chunk(chunk, report)
        if entry is not None:
            report.entry_count += 1
            yield entry
    report.blank = scanner.blank


def _log_summary(report: BrlogParseResult) -> None:
    """Log counts only; the payload itself is never logged. Debug level: the processor parses
    every raw-entries report, and a line per report would drown the service's log."""
    logger.debug(
        "brlog read: %d entries, %d problems, encoding %s, truncated %s",
        report.entry_count,
        report.problem_count,
        report.encoding,
        report.truncated,
    )


def parse_brlog_text(text: str) -> BrlogParseResult:
    """Parse brlog text: a whole file, or only the ``<Log>`` elements appended lately.

    The root element and the XML declaration are optional, so the same function serves
    callers that receive just the new elements of a file.
    """
    report = BrlogParseResult(encoding="text")
    report.entries.extend(_entries_from_texts([text], report))
    _log_summary(report)
    return report


def parse_brlog(data: bytes) -> BrlogParseResult:
    """Parse the bytes of a ``brlog.xml`` file held in memory."""
    label = detect_encoding(data)
    report = BrlogParseResult(encoding=label)
    decoder = _StreamDecoder(label, report)
    bom = _bom_length(data)
    text = decoder.decode(data[bom:], start_offset=bom) + decoder.finish()

    report.entries.extend(_entries_from_texts([text], report))
    _log_summary(report)
    return report


def _since_epoch(since: datetime | None) -> float | None:
    """Return since as epoch seconds; a naive datetime is taken as UTC."""
    if since is None:
        return None
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return since.timestamp()


def _read_texts(path: str | os.PathLike[str], report: BrlogParseResult) -> Iterator[str]:
    """Yield the decoded text of the file in pieces of about READ_CHUNK_BYTES."""
    with open(path, "rb") as handle:
        head = handle.read(DETECT_SAMPLE_BYTES)
        label = detect_encoding(head)
        report.encoding = label
        decoder = _StreamDecoder(label, report)
        bom = _bom_length(head)
        yield decoder.decode(head[bom:], start_offset=bom)

        offset = len(head)
        # The file may grow while being read; stop at the size seen at the start (plus
        # one read, to notice it) instead of chasing a writer forever.
        limit = os.fstat(handle.fileno()).st_size // READ_CHUNK_BYTES + 2
        for _step in range(limit):
            data = handle.read(READ_CHUNK_BYTES)
            if not data:
                break
            yield decoder.decode(data, start_offset=offset)
            offset += len(data)
        yield decoder.finish()


def iter_brlog_entries(
    path: str | os.PathLike[str],
    *,
    since: datetime | None = None,
    task_id: str | None = None,
    report: BrlogParseResult | None = None,
) -> Iterator[BrlogEntry]:
    """Yield the entries of a brlog file in file order, reading it in bounded memory.

    ``since`` keeps entries strictly newer than it (epochs compared as numbers; a naive
    datetime is UTC). ``task_id`` keeps one task's entries and accepts a GUID with or
    without braces, in any case; a value that is not a GUID raises ValueError at once.
    Problems, the encoding and truncation are written into ``report`` when one is given;
    its ``entries`` list is left empty so that memory stays bounded.
    """
    since_epoch = _since_epoch(since)
    wanted_task = normalise_task_id(task_id) if task_id is not None else None
    sink = report if report is not None else BrlogParseResult()
    return _filtered_entries(path, since_epoch, wanted_task, sink)


def _filtered_entries(
    path: str | os.PathLike[str],
    since_epoch: float | None,
    wanted_task: str | None,
    report: BrlogParseResult,
) -> Iterator[BrlogEntry]:
    """Stream entries from the file, keeping those that pass the filters."""
    for entry in _entries_from_texts(_read_texts(path, report), report):
        if since_epoch is not None and entry.epoch <= since_epoch:
            continue
        if wanted_task is not None and entry.task_id != wanted_task:
            continue
        yield entry
    _log_summary(report)
