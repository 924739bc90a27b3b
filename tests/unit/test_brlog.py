"""Tests of the AOMEI brlog.xml parser and of its command-line front end."""

from __future__ import annotations

import codecs
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from processors.aomei import brlog
from processors.aomei.brlog import (
    BrlogEntry,
    BrlogParseResult,
    decode_brlog,
    detect_encoding,
    iter_brlog_entries,
    parse_brlog,
    parse_brlog_text,
)
from processors.aomei.cli import run_parse

FIXTURES = Path(__file__).parents[1] / "fixtures" / "aomei"
FIXTURE_NAMES = sorted(path.stem for path in FIXTURES.glob("*.xml"))

TASK_SYSTEM = "3F2504E0-4F89-41D3-9A0C-0305E82C3301"
TASK_NAS = "6B29FC40-CA47-1067-B31D-00DD010662DA"


def log_xml(
    task: str = TASK_SYSTEM,
    epoch: str | int = 1761958800,
    name: str = "System Backup Daily",
    *,
    operation: str = "System Backup",
    result: str = "Success",
    code: str | int | None = 0,
    detail: str = "The operation completed successfully.",
) -> str:
    """Return one ``<Log>`` element as AOMEI writes it (CRLF, indented)."""
    lines = [
        f'  <Log ID="{{{task}}}">',
        f"    <Time>{epoch}</Time>",
        f"    <Task>{name}</Task>",
        f"    <Operation>{operation}</Operation>",
        f"    <Result>{result}</Result>",
    ]
    if code is not None:
        lines.append(f"    <ResultCode>{code}</ResultCode>")
    lines.append(f"    <Detail>{detail}</Detail>")
    lines.append("  </Log>")
    return "\r\n".join(lines) + "\r\n"


def document(*logs: str, encoding: str = "utf-8", closed: bool = True) -> str:
    """Return a whole brlog document around the given ``<Log>`` elements."""
    head = f'<?xml version="1.0" encoding="{encoding}"?>\r\n<BRLog>\r\n'
    return head + "".join(logs) + ("</BRLog>\r\n" if closed else "")


def three_runs() -> str:
    """A document of three good runs of two interleaved tasks."""
    return document(
        log_xml(epoch=1761958800),
        log_xml(TASK_NAS, 1761962400, "Documents to NAS", code=4103, result="Failed"),
        log_xml(epoch=1762045200),
    )


def epochs(result: BrlogParseResult) -> list[int]:
    """The epochs of the parsed entries, in order."""
    return [entry.epoch for entry in result.entries]


def kinds(result: BrlogParseResult) -> list[str]:
    """The kinds of the problems found, in order."""
    return [problem.kind for problem in result.problems]


def run_cli(
    path: Path | str, since: str | None = None, task_id: str | None = None
) -> tuple[int, str, str]:
    """Run the CLI entry point and return (exit code, stdout text, stderr text)."""
    out, err = io.StringIO(), io.StringIO()
    code = run_parse(str(path), since=since, task_id=task_id, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def stream_lines(path: Path) -> Iterator[str]:
    """Read a JSON-lines text file line by line."""
    with path.open(encoding="utf-8") as handle:
        yield from handle


# --- fixtures -------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_entries_match_expected_json(name: str) -> None:
    data = (FIXTURES / f"{name}.xml").read_bytes()
    expected_text = (FIXTURES / f"{name}.expected.jsonl").read_text(encoding="utf-8")

    result = parse_brlog(data)

    got = [entry.to_json_dict() for entry in result.entries]
    assert got == [json.loads(line) for line in expected_text.splitlines()]
    assert [list(item) for item in got] == [
        list(json.loads(line)) for line in expected_text.splitlines()
    ]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_cli_output_is_exact(name: str) -> None:
    expected_text = (FIXTURES / f"{name}.expected.jsonl").read_bytes().decode("utf-8")

    code, out, _err = run_cli(FIXTURES / f"{name}.xml")

    assert code == 0
    assert out == expected_text


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_streaming_equals_whole_parse(name: str) -> None:
    path = FIXTURES / f"{name}.xml"

    assert list(iter_brlog_entries(path)) == parse_brlog(path.read_bytes()).entries


def test_fixture_appending_is_truncated_and_keeps_complete_entry() -> None:
    result = parse_brlog((FIXTURES / "brlog_appending.xml").read_bytes())

    assert result.truncated
    assert kinds(result) == ["truncated"]
    assert result.problems[0].entry_index == 1
    assert result.problems[0].line == 11
    assert len(result.entries) == 1


def test_fixture_appending_cli_reports_truncation_on_err() -> None:
    code, _out, err = run_cli(FIXTURES / "brlog_appending.xml")

    assert code == 0
    assert "1 problem" in err
    assert "line 11" in err


def test_fixture_french_utf16_is_detected_despite_declaration() -> None:
    data = (FIXTURES / "brlog_fr_utf16le.xml").read_bytes()

    assert detect_encoding(data) == "utf-16-le"
    assert decode_brlog(data).startswith("<?xml")
    assert parse_brlog(data).entries[1].task_name == "Photos \u2192 NAS"


# --- encodings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        (codecs.BOM_UTF8 + three_runs().encode("utf-8"), "utf-8-sig"),
        (three_runs().encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF16_LE + three_runs().encode("utf-16-le"), "utf-16-le"),
        (three_runs().encode("utf-16-le"), "utf-16-le"),
        (codecs.BOM_UTF16_BE + three_runs().encode("utf-16-be"), "utf-16-be"),
        (three_runs().encode("utf-16-be"), "utf-16-be"),
    ],
    ids=["utf8-bom", "utf8", "utf16le-bom", "utf16le-nobom", "utf16be-bom", "utf16be-nobom"],
)
def test_encodings_are_detected_and_parsed(raw: bytes, label: str, tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_bytes(raw)

    result = parse_brlog(raw)

    assert detect_encoding(raw) == label
    assert result.encoding == label
    assert epochs(result) == [1761958800, 1761962400, 1762045200]
    assert result.problems == []
    assert not result.truncated
    assert not decode_brlog(raw).startswith("\ufeff")
    assert list(iter_brlog_entries(path)) == result.entries


def test_utf16_without_bom_with_mostly_non_latin_names() -> None:
    name = "\u7cfb\u7edf\u5907\u4efd" * 20
    raw = document(log_xml(name=name)).encode("utf-16-le")

    result = parse_brlog(raw)

    assert detect_encoding(raw) == "utf-16-le"
    assert result.entries[0].task_name == name


def test_declaration_is_not_trusted() -> None:
    raw = document(log_xml(name="Sauvegarde syst\u00e8me"), encoding="utf-16").encode("utf-8")

    result = parse_brlog(raw)

    assert result.encoding == "utf-8"
    assert result.entries[0].task_name == "Sauvegarde syst\u00e8me"


def test_invalid_utf8_byte_is_reported_and_other_entries_survive() -> None:
    raw = document(
        log_xml(epoch=1),
        log_xml(epoch=2, name="Bad\u00ff"),
        log_xml(epoch=3),
    ).encode("utf-8")
    raw = raw.replace("Bad\u00ff".encode(), b"Bad\xff")

    result = parse_brlog(raw)

    assert epochs(result) == [1, 2, 3]
    assert result.entries[1].task_name == "Bad\ufffd"
    assert kinds(result) == ["decode"]
    assert result.problems[0].byte_offset == raw.index(b"\xff")


# --- truncation and padding -----------------------------------------------------------


@pytest.mark.parametrize("codec", ["utf-8", "utf-16-le"])
@pytest.mark.parametrize("padding", [1, 2, 4096, 70_001])
def test_trailing_nul_bytes_are_ignored(codec: str, padding: int, tmp_path: Path) -> None:
    raw = three_runs().encode(codec) + b"\0" * padding
    path = tmp_path / "brlog.xml"
    path.write_bytes(raw)

    result = parse_brlog(raw)

    assert detect_encoding(raw) == codec
    assert epochs(result) == [1761958800, 1761962400, 1762045200]
    assert result.problems == []
    assert not result.truncated
    assert list(iter_brlog_entries(path)) == result.entries


@pytest.mark.parametrize(
    "cut_after",
    [
        '<Log ID="{6B29',  # inside the start tag of an entry
        "<Ti",  # inside a tag
        "<Task>Docu",  # inside text
        "</Log",  # inside the closing tag
        "</Log>\r\n  <Lo",  # after a complete entry, inside the next start tag
        "</Log>\r\n",  # between entries, root not closed
    ],
)
@pytest.mark.parametrize("codec", ["utf-8", "utf-16-le"])
def test_truncated_file_keeps_complete_entries(cut_after: str, codec: str) -> None:
    text = document(
        log_xml(epoch=1),
        log_xml(TASK_NAS, 2, "Documents to NAS"),
        log_xml(epoch=3),
        closed=False,
    )
    second = text.index(f'<Log ID="{{{TASK_NAS}')
    cut = text.index(cut_after, second) + len(cut_after)

    result = parse_brlog(text[:cut].encode(codec))

    assert result.truncated
    complete = [1, 2] if cut_after.startswith("</Log>") else [1]
    assert epochs(result) == complete
    assert set(kinds(result)) <= {"truncated"}


def test_nul_block_between_entries_is_skipped() -> None:
    raw = document(log_xml(epoch=1), "\0" * 1000, log_xml(epoch=2)).encode("utf-16-le")

    result = parse_brlog(raw)

    assert epochs(result) == [1, 2]
    assert result.problems == []


def test_truncated_inside_multibyte_character() -> None:
    raw = document(log_xml(epoch=1), log_xml(epoch=2, name="Syst\u00e8me"), closed=False)
    cut = raw.encode("utf-8").index("\u00e8".encode()) + 1

    result = parse_brlog(raw.encode("utf-8")[:cut])

    assert epochs(result) == [1]
    assert result.truncated
    assert kinds(result) == ["truncated"]


def test_truncated_utf16_with_odd_length() -> None:
    raw = document(log_xml(epoch=1), log_xml(epoch=2), closed=False).encode("utf-16-le")

    result = parse_brlog(raw[: len(raw) - 41])

    assert epochs(result) == [1]
    assert result.truncated


# --- damaged entries ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damaged", "kind"),
    [
        (log_xml(epoch=2, name="A & B"), "malformed"),  # bare ampersand
        (log_xml(epoch=2).replace("</Task>", "</Tsak>"), "malformed"),
        (log_xml(epoch=2).replace("  </Log>\r\n", ""), "malformed"),  # never closed
        (log_xml(epoch=2).replace("<Time>2</Time>", ""), "missing-field"),
        (log_xml(epoch="2025-11-01"), "bad-value"),
        (log_xml(epoch="17619.5"), "bad-value"),
        (log_xml(epoch=""), "missing-field"),
        (log_xml(epoch=10**15), "bad-value"),
        (log_xml(epoch=2).replace(f' ID="{{{TASK_SYSTEM}}}"', ""), "missing-field"),
        (log_xml(task="not-a-guid", epoch=2), "bad-value"),
        (f'  <Log ID="{{{TASK_SYSTEM}}}"/>\r\n', "missing-field"),
        ("  <Time>2</Time></Log>\r\n", "malformed"),  # no opening tag
        (log_xml(epoch=2, name="x\0y"), "malformed"),
    ],
)
def test_damaged_entry_in_the_middle_loses_only_itself(damaged: str, kind: str) -> None:
    text = document(log_xml(epoch=1), damaged, log_xml(epoch=3), log_xml(epoch=4))

    result = parse_brlog(text.encode("utf-8"))

    assert epochs(result) == [1, 3, 4]
    assert kinds(result) == [kind]
    assert not result.truncated
    assert result.problems[0].line is not None


def test_problem_position_names_the_entry_and_line() -> None:
    text = document(log_xml(epoch=1), log_xml(epoch="soon"), log_xml(epoch=3))

    problem = parse_brlog_text(text).problems[0]

    assert problem.entry_index == 1
    assert problem.line == 11
    assert text[problem.char_offset or 0 :].startswith("<Log")
    assert "line 11" in problem.describe()
    assert "Time" in problem.reason


def test_missing_task_name_is_kept_but_reported() -> None:
    result = parse_brlog_text(log_xml(name=""))

    assert result.entries[0].task_name == ""
    assert kinds(result) == ["missing-field"]


def test_comment_and_cdata_do_not_end_an_entry() -> None:
    entry = log_xml(detail="<![CDATA[see </Log> here]]>").replace(
        "<Time>", "<!-- </Log> <Log> --><Time>"
    )
    text = document("<!-- <Log ID='x'> -->\r\n", entry, log_xml(epoch=2))

    result = parse_brlog_text(text)

    assert epochs(result) == [1761958800, 2]
    assert result.entries[0].detail == "see </Log> here"
    assert result.problems == []


def test_problems_beyond_the_limit_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brlog, "MAX_KEPT_PROBLEMS", 2)
    text = document(*(log_xml(epoch="bad") for _ in range(5)), log_xml(epoch=9))

    result = parse_brlog_text(text)

    assert epochs(result) == [9]
    assert len(result.problems) == 2
    assert result.omitted_problems == 3
    assert result.problem_count == 5


def test_oversized_entry_is_skipped_while_streaming(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(brlog, "MAX_ENTRY_CHARS", 500)
    monkeypatch.setattr(brlog, "READ_CHUNK_BYTES", 64)
    huge = log_xml(epoch=2, detail="x" * 5000)
    path = tmp_path / "brlog.xml"
    path.write_text(document(log_xml(epoch=1), huge, log_xml(epoch=3)), encoding="utf-8")
    report = BrlogParseResult()

    found = [entry.epoch for entry in iter_brlog_entries(path, report=report)]

    assert found == [1, 3]
    assert kinds(report) == ["too-large"]


# --- field values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "result_text", "result_code", "status"),
    [
        ("0", "Success", 0, "success"),
        ("0", "\u00c9chec", 0, "success"),  # localised text never decides
        ("4103", "Success", 4103, "failed"),
        ("-1", "Failed", -1, "failed"),
        (" 4103 ", "Failed", 4103, "failed"),
        ("abc", "Success", None, "warning"),
        ("0x1007", "Failed", None, "warning"),
        ("", "Success", None, "warning"),
        (None, "Success", None, "warning"),
        ("1.5", "Success", None, "warning"),
    ],
)
def test_status_comes_from_result_code_only(
    code: str | None, result_text: str, result_code: int | None, status: str
) -> None:
    entry = parse_brlog_text(log_xml(code=code, result=result_text)).entries[0]

    assert entry.result_code == result_code
    assert entry.status == status
    assert entry.result == result_text


def test_names_are_unescaped_and_cleaned() -> None:
    raw_name = " \u200eDocs &amp; Photos\u00a0&lt;NAS&gt;\u200f\u202b\u2066\ufeff "

    entry = parse_brlog_text(log_xml(name=raw_name)).entries[0]

    assert entry.task_name == "Docs & Photos <NAS>"


def test_localised_text_is_kept_as_written() -> None:
    text = log_xml(
        name="Sauvegarde syst\u00e8me",
        operation="Sauvegarde compl\u00e8te",
        result="Succ\u00e8s",
        detail="L'op\u00e9ration a r\u00e9ussi.",
    )

    entry = parse_brlog_text(text).entries[0]

    assert entry.operation == "Sauvegarde compl\u00e8te"
    assert entry.result == "Succ\u00e8s"
    assert entry.detail == "L'op\u00e9ration a r\u00e9ussi."


def test_time_with_invisible_marks_is_read() -> None:
    entry = parse_brlog_text(log_xml(epoch="\u200e1761958800\u00a0")).entries[0]

    assert entry.epoch == 1761958800
    assert entry.time == "2025-11-01T01:00:00Z"


def test_detail_attributes_are_ignored_and_empty_detail_is_none() -> None:
    with_attributes = log_xml().replace("<Detail>", '<Detail code="7" lang="en">')
    empty = log_xml(detail="   ")
    absent = log_xml().replace("    <Detail>The operation completed successfully.</Detail>\r\n", "")

    entries = parse_brlog_text(with_attributes + empty + absent).entries

    assert entries[0].detail == "The operation completed successfully."
    assert entries[1].detail is None
    assert entries[2].detail is None


def test_guid_is_lower_case_without_braces() -> None:
    entry = parse_brlog_text(log_xml(task=TASK_NAS)).entries[0]

    assert entry.task_id == TASK_NAS.lower()


def test_time_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        entry = parse_brlog_text(log_xml(epoch=1761958800)).entries[0]
    finally:
        monkeypatch.undo()
        time.tzset()

    assert entry.time == "2025-11-01T01:00:00Z"


def test_epoch_zero_and_json_shape() -> None:
    entry = parse_brlog_text(log_xml(epoch=0)).entries[0]

    assert entry.time == "1970-01-01T00:00:00Z"
    assert list(entry.to_json_dict()) == [
        "task_id",
        "task_name",
        "time",
        "operation",
        "result",
        "result_code",
        "status",
        "detail",
    ]


def test_entry_is_frozen() -> None:
    entry = parse_brlog_text(log_xml()).entries[0]

    with pytest.raises(AttributeError):
        entry.status = "failed"  # type: ignore[misc]


def test_build_derives_time_and_status() -> None:
    entry = BrlogEntry.build(
        task_id="x",
        task_name="y",
        epoch=1000000000,
        operation=None,
        result=None,
        result_code=None,
        detail=None,
    )

    assert entry.time == "2001-09-09T01:46:40Z"
    assert entry.status == "warning"


# --- text API -------------------------------------------------------------------------


def test_text_api_accepts_bare_log_elements() -> None:
    text = log_xml(epoch=1) + log_xml(TASK_NAS, 2, "Documents to NAS")

    result = parse_brlog_text(text)

    assert epochs(result) == [1, 2]
    assert result.encoding == "text"
    assert not result.truncated
    assert result.problems == []


def test_text_api_reports_a_cut_element() -> None:
    text = log_xml(epoch=1) + log_xml(epoch=2)[:60]

    result = parse_brlog_text(text)

    assert epochs(result) == [1]
    assert result.truncated


def test_text_api_notes_a_tag_cut_between_elements() -> None:
    result = parse_brlog_text(log_xml(epoch=1) + "  <Lo")

    assert epochs(result) == [1]
    assert result.truncated
    assert result.problems == []


# --- order, filters, streaming --------------------------------------------------------


def test_entries_keep_file_order_and_times_compare_as_numbers(tmp_path: Path) -> None:
    # As text "999999999" sorts after "1000000000"; as numbers it is older.
    path = tmp_path / "brlog.xml"
    path.write_text(
        document(log_xml(epoch=1000000000), log_xml(epoch=999999999), log_xml(epoch=1000000001))
    )
    since = datetime.fromtimestamp(999999999, UTC)

    kept = [entry.epoch for entry in iter_brlog_entries(path, since=since)]

    assert epochs(parse_brlog(path.read_bytes())) == [1000000000, 999999999, 1000000001]
    assert kept == [1000000000, 1000000001]


def test_since_is_strict_and_naive_means_utc(tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_text(three_runs())
    at_second = datetime(2025, 11, 1, 2, 0, 0)
    paris = datetime(2025, 11, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=1)))

    naive = [entry.epoch for entry in iter_brlog_entries(path, since=at_second)]
    aware = [entry.epoch for entry in iter_brlog_entries(path, since=paris)]

    assert naive == [1762045200]
    assert aware == [1761962400, 1762045200]


@pytest.mark.parametrize(
    "task_filter", [TASK_NAS, TASK_NAS.lower(), f"{{{TASK_NAS}}}", f" {{{TASK_NAS.lower()}}} "]
)
def test_task_filter_accepts_any_spelling(task_filter: str, tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_text(three_runs())

    kept = list(iter_brlog_entries(path, task_id=task_filter))

    assert [entry.epoch for entry in kept] == [1761962400]


def test_task_filter_rejects_a_non_guid_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        iter_brlog_entries(tmp_path / "missing.xml", task_id="Documents to NAS")


@pytest.mark.parametrize("codec", ["utf-8", "utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_streaming_in_tiny_reads_equals_whole_parse(
    codec: str, chunk: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(brlog, "READ_CHUNK_BYTES", chunk)
    text = document(
        log_xml(epoch=1, name="Syst\u00e8me \u2192 NAS"),
        log_xml(epoch="bad"),
        "<!-- a comment </Log> -->\r\n",
        log_xml(TASK_NAS, 3, "Documents &amp; more"),
        log_xml(epoch=4)[:-30],
        closed=False,
    )
    raw = codecs.BOM_UTF16_LE + text.encode(codec) if codec == "utf-16-le" else text.encode(codec)
    path = tmp_path / "brlog.xml"
    path.write_bytes(raw)
    whole = parse_brlog(raw)
    report = BrlogParseResult()

    streamed = list(iter_brlog_entries(path, report=report))

    assert streamed == whole.entries
    assert [entry.epoch for entry in streamed] == [1, 3]
    assert report.problems == whole.problems
    assert report.truncated and whole.truncated
    assert report.entries == []


def test_streaming_does_not_lose_entries_after_a_damaged_one(tmp_path: Path) -> None:
    logs = [log_xml(epoch=n) for n in range(1, 3001)]
    logs[1500] = logs[1500].replace("</Task>", "")
    path = tmp_path / "brlog.xml"
    path.write_bytes(codecs.BOM_UTF16_LE + document(*logs).encode("utf-16-le"))
    report = BrlogParseResult()

    found = [entry.epoch for entry in iter_brlog_entries(path, report=report)]

    assert len(found) == 2999
    assert 1501 not in found
    assert found[-1] == 3000
    assert kinds(report) == ["malformed"]


# --- command line ---------------------------------------------------------------------


def test_cli_filters_by_since_and_task(tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_text(three_runs())

    code, out, err = run_cli(path, since="2025-11-01T01:30:00Z", task_id=TASK_SYSTEM.lower())

    assert code == 0
    assert [json.loads(line)["time"] for line in out.splitlines()] == ["2025-11-02T01:00:00Z"]
    assert err == ""


def test_cli_output_is_compact_json_with_unicode(tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_bytes(codecs.BOM_UTF8 + document(log_xml(name="Syst\u00e8me")).encode())

    _code, out, _err = run_cli(path)

    assert out.startswith('{"task_id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301", ')
    assert '"task_name": "Syst\u00e8me"' in out
    assert out.endswith("}\n")


@pytest.mark.parametrize("since", ["yesterday", "", "2025-13-01", "1761958800"])
def test_cli_bad_since_names_the_option(since: str, tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_text(three_runs())

    code, out, err = run_cli(path, since=since)

    assert code == 2
    assert out == ""
    assert "--since" in err


def test_cli_bad_task_id_names_the_option(tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_text(three_runs())

    code, _out, err = run_cli(path, task_id="System Backup Daily")

    assert code == 2
    assert "--task-id" in err


@pytest.mark.parametrize("content", [b"", b"\r\n  \r\n", b"\0" * 100, codecs.BOM_UTF8])
def test_cli_empty_file_is_an_empty_history(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_bytes(content)

    code, out, err = run_cli(path)

    assert code == 0
    assert out == ""
    assert "empty" in err
    assert parse_brlog(content).blank


@pytest.mark.parametrize(
    "content",
    [
        b"this is not xml at all\r\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfd" * 50,
        b'<?xml version="1.0"?><config><item/></config>',
        bytes(range(256)) * 4,
    ],
    ids=["text", "binary", "other-xml", "all-bytes"],
)
def test_cli_non_brlog_exits_2(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_bytes(content)

    code, out, err = run_cli(path)

    assert code == 2
    assert out == ""
    assert "not an AOMEI brlog" in err or "decoded" in err


def test_cli_directory_exits_2(tmp_path: Path) -> None:
    code, out, err = run_cli(tmp_path)

    assert code == 2
    assert out == ""
    assert "directory" in err


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    code, _out, err = run_cli(tmp_path / "nope.xml")

    assert code == 2
    assert "no such file" in err


def test_cli_damaged_entries_exit_0_with_summary(tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    logs = [log_xml(epoch="bad") for _ in range(12)]
    path.write_text(document(log_xml(epoch=1), *logs))

    code, out, err = run_cli(path)

    assert code == 0
    assert len(out.splitlines()) == 1
    assert "12 problems" in err
    assert "... and 2 more" in err


def test_cli_all_entries_damaged_is_still_a_brlog(tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_text(document(log_xml(epoch="bad")))

    code, out, err = run_cli(path)

    assert code == 0
    assert out == ""
    assert "1 problem" in err


def test_cli_output_round_trips_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "brlog.xml"
    path.write_text(three_runs())
    target = tmp_path / "out.jsonl"

    with target.open("w", encoding="utf-8") as out:
        code = run_parse(str(path), since=None, task_id=None, out=out, err=io.StringIO())

    assert code == 0
    lines = [json.loads(line) for line in stream_lines(target)]
    assert [line["status"] for line in lines] == ["success", "failed", "success"]
