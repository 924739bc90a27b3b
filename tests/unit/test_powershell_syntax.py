"""The PowerShell agent: its scripts parse, and it stays in step with the Python agent.

No PowerShell runs in CI, so the scripts are checked with tree-sitter's PowerShell grammar,
and what can be compared without running them is: the request bodies (golden files that the
README shows), the report-id namespace, the regular expression that cuts entries out of the
file, and the protocol's names and exit codes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from processors.aomei import agent
from processors.aomei.agent import AgentConfig, preview_requests
from processors.aomei.brlog import decode_brlog, parse_brlog_text

ROOT = Path(__file__).parents[2]
SCRIPTS = ROOT / "scripts" / "powershell"
FIXTURES = ROOT / "tests" / "fixtures" / "aomei"
GOLDEN = ROOT / "tests" / "fixtures" / "agent"
PS1_FILES = sorted(SCRIPTS.glob("*.ps1"))
FIXTURE_NAMES = sorted(path.stem for path in FIXTURES.glob("*.xml"))

# The machine the golden files are written for.
GOLDEN_SERVER = "BACKUP-PC01"
GOLDEN_LOG_PATH = r"C:\ProgramData\AomeiBR\brlog.xml"


def _syntax_problems(node: Node, source: bytes) -> list[str]:
    """Every ERROR or MISSING node under node, as "line:column: kind near text"."""
    problems: list[str] = []
    stack = [node]
    # A tree has fewer nodes than its source has bytes (plus the root), which bounds the walk.
    for _step in range(len(source) * 4 + 8):
        if not stack:
            break
        current = stack.pop()
        if current.is_error or current.is_missing:
            line, column = current.start_point
            kind = "MISSING" if current.is_missing else "ERROR"
            near = source[current.start_byte : current.end_byte][:60].decode(errors="replace")
            problems.append(f"{line + 1}:{column + 1}: {kind} near {near!r}")
        if current.has_error:
            stack.extend(reversed(current.children))
    assert not stack, "syntax tree walk hit its bound"
    return problems


def test_there_are_scripts_to_check() -> None:
    names = {path.name for path in PS1_FILES}

    assert {
        "aomei_integration.ps1",
        "common_functions.ps1",
        "register_scheduled_task.ps1",
    } <= names


@pytest.mark.parametrize("script", PS1_FILES, ids=lambda path: path.name)
def test_powershell_script_parses_without_errors(script: Path) -> None:
    parser = Parser(Language(tree_sitter_powershell.language()))
    source = script.read_bytes()

    tree = parser.parse(source)
    problems = _syntax_problems(tree.root_node, source)

    assert not problems, f"{script.name}:\n" + "\n".join(problems)


def test_the_syntax_check_does_find_errors() -> None:
    parser = Parser(Language(tree_sitter_powershell.language()))
    source = b"function Broken {\n    if ($x -eq 1 {\n        'no closing paren'\n    }\n"

    problems = _syntax_problems(parser.parse(source).root_node, source)

    assert problems
    assert re.match(r"^\d+:\d+: (ERROR|MISSING)", problems[0])


# --- request bodies ----------------------------------------------------------------------


def planned_requests(fixture: str, tmp_path: Path) -> list[dict[str, Any]]:
    """What the Python agent's test mode prints for a fixture on the golden machine."""
    config = AgentConfig(
        api_url="http://127.0.0.1:8080/api/v1",
        api_key="unused",
        brlog_path=FIXTURES / f"{fixture}.xml",
        state_dir=tmp_path / "state",
        server_name=GOLDEN_SERVER,
        log_file_path=GOLDEN_LOG_PATH,
    )
    requests, _history = preview_requests(config)
    return [request.to_json() for request in requests]


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_request_bodies_match_the_golden_file(fixture: str, tmp_path: Path) -> None:
    """Set BACKUPHUB_UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change
    (then update README.md and check the PowerShell agent builds the same)."""
    golden = GOLDEN / f"{fixture}.requests.json"
    planned = planned_requests(fixture, tmp_path)
    if os.environ.get("BACKUPHUB_UPDATE_GOLDEN") == "1":
        golden.write_text(json.dumps(planned, indent=2, ensure_ascii=False) + "\n", "utf-8")

    assert planned == json.loads(golden.read_text(encoding="utf-8"))


def test_readme_shows_the_golden_bodies() -> None:
    readme = (SCRIPTS / "README.md").read_text(encoding="utf-8")
    after_marker = readme.split("<!-- golden:brlog_en_utf8 -->", 1)[1]
    block = re.search(r"```json\n(.*?)\n```", after_marker, re.S)

    assert block is not None
    golden = GOLDEN / "brlog_en_utf8.requests.json"
    assert json.loads(block.group(1)) == json.loads(golden.read_text(encoding="utf-8"))


def test_golden_report_ids_are_what_the_derivation_gives() -> None:
    """The README states the derivation; the golden ids must follow from it."""
    for fixture in FIXTURE_NAMES:
        requests = json.loads((GOLDEN / f"{fixture}.requests.json").read_text(encoding="utf-8"))
        for request in requests:
            if request["path"] != agent.LOG_ANALYSIS_PATH:
                continue
            body = request["body"]
            epochs = [entry.epoch for entry in parse_brlog_text(body["raw_entries"]["xml"]).entries]
            task_id = body["raw_entries"]["task_id"]
            expected = agent.report_id_for(GOLDEN_SERVER, task_id, min(epochs), max(epochs))
            assert body["report_id"] == expected


# --- protocol constants and algorithms shared with the scripts -----------------------------


def common_functions() -> str:
    return (SCRIPTS / "common_functions.ps1").read_text(encoding="utf-8")


def test_report_id_namespace_is_the_same_in_both_agents() -> None:
    source = common_functions()
    block = source.split("$script:ReportIdNamespace = [byte[]](", 1)[1].split(")", 1)[0]
    namespace = bytes(int(value, 16) for value in re.findall(r"0x([0-9a-fA-F]{2})", block))

    assert namespace == agent.REPORT_ID_NAMESPACE.bytes


def test_protocol_names_and_exit_codes_are_the_same_in_both_agents() -> None:
    source = common_functions()

    assert f"$script:StateFileName = '{agent.STATE_FILE_NAME}'" in source
    assert f"$script:LockFileName = '{agent.LOCK_FILE_NAME}'" in source
    assert f"$script:StateFormat = {agent.STATE_FORMAT}" in source
    assert f"$script:SpoolFormat = {agent.SPOOL_FORMAT}" in source
    assert f"$script:StaleLockSeconds = {agent.STALE_LOCK_SECONDS}" in source
    assert f"$script:RegisterPath = '{agent.REGISTER_PATH}'" in source
    assert f"$script:LogAnalysisPath = '{agent.LOG_ANALYSIS_PATH}'" in source
    assert f"$script:PingPath = '{agent.PING_PATH}'" in source
    assert f"$script:JobNotFoundCode = '{agent.JOB_NOT_FOUND_CODE}'" in source
    assert f"max_entries_per_report = {agent.MAX_ENTRIES_PER_REPORT}" in source
    for name, code in [
        ("ExitOk", agent.EXIT_OK),
        ("ExitPending", agent.EXIT_PENDING),
        ("ExitConfig", agent.EXIT_CONFIG),
        ("ExitAuth", agent.EXIT_AUTH),
        ("ExitRejected", agent.EXIT_REJECTED),
    ]:
        assert f"$script:{name} = {code}" in source


def powershell_entry_pattern() -> re.Pattern[str]:
    """The scripts' .NET pattern for complete <Log> elements, in Python's dialect."""
    source = common_functions()
    block = source.split("$script:EntryPattern = ", 1)[1].split("RegexOptions]::Singleline", 1)[0]
    pieces = re.findall(r"'((?:[^']|'')*)'", block)
    pattern = "".join(piece.replace("''", "'") for piece in pieces)
    return re.compile(pattern.replace("(?<entry>", "(?P<entry>"), re.S)


TRICKY_HISTORIES = {
    "cut_last_entry": "<BRLog>{one}{two_cut}",
    "entry_opened_again": "<BRLog>{one_unclosed}{two}</BRLog>",
    "entry_in_comment": "<BRLog><!-- {one} -->{two}</BRLog>",
    "cdata_holding_a_close_tag": "<BRLog>{cdata}</BRLog>",
    "self_closed_log": "<BRLog><Log ID='x'/>{two}</BRLog>",
    "root_closed_inside_entry": "<BRLog>{one_unclosed}</BRLog>",
    "stray_close_tag": "<BRLog></Log>{two}</BRLog>",
}


def _tricky_text(template: str) -> str:
    guid = "{3F2504E0-4F89-41D3-9A0C-0305E82C3301}"

    def log(epoch: int, extra: str = "") -> str:
        return f'<Log ID="{guid}"><Time>{epoch}</Time><Task>T</Task>{extra}</Log>'

    return template.format(
        one=log(1),
        two=log(2),
        two_cut=log(2)[:-8],
        one_unclosed=log(1)[: -len("</Log>")],
        cdata=log(3, "<Detail><![CDATA[x </Log> y]]></Detail>"),
    )


@pytest.mark.parametrize("case", [*FIXTURE_NAMES, *TRICKY_HISTORIES])
def test_powershell_entry_pattern_finds_the_entries_the_parser_finds(case: str) -> None:
    if case in TRICKY_HISTORIES:
        text = _tricky_text(TRICKY_HISTORIES[case])
    else:
        text = decode_brlog((FIXTURES / f"{case}.xml").read_bytes())
    pattern = powershell_entry_pattern()

    found = [
        entry
        for match in pattern.finditer(text)
        if match.group("entry")
        for entry in parse_brlog_text(match.group("entry")).entries
    ]

    assert found == parse_brlog_text(text).entries


def test_example_config_has_every_setting_and_no_real_key() -> None:
    config = json.loads((SCRIPTS / "config.json").read_text(encoding="utf-8"))

    assert config["api_url"] == "http://localhost:8080/api/v1"
    assert config["api_key"].startswith("REPLACE-")
    assert {"log_level", "brlog_path", "state_dir", "spool_dir"} <= set(config)
    assert config["max_entries_per_report"] == agent.MAX_ENTRIES_PER_REPORT
