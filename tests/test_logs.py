"""Logs an operator can query: progress lines with totals, JSON logs line by line, and plain
lines that nothing from an upload can break or steer."""

from __future__ import annotations

import io
import json
import logging
import unicodedata

import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.core.report import RunReport
from warehouse.core.run import emit_summary, write_summary_file
from warehouse.core.text import escape_controls
from warehouse.dicom.identity import image_identity
from warehouse.dicom.jsonrep import header_json
from warehouse.dicom.reader import read_header
from warehouse.loader.state import Progress
from warehouse.runtime.logs import plain_formatter
from warehouse.storage.local import LocalStorage


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    files = {"config.json": builders.config(["raw-a"], split=["A Trust"])}
    for n in range(6):
        files[f"raw-a/2021-01-01/data/Covid{n}_data.json"] = clinical(f"Covid{n}", "A Trust")
        for instance in range(20):
            name, data = image(f"Covid{n}", "DX", instance=instance)
            files[f"raw-a/2021-01-02/images/{name}"] = data
    files["raw-a/2021-01-02/images/garbage.dcm"] = b"garbage" * 100
    builders.put_tree(LocalStorage(root), files)
    return root


def test_progress_line_counts_rate_and_time_left():
    now = [100.0]
    progress = Progress(clock=lambda: now[0])
    assert progress.line() is None  # the inputs are not known yet
    progress.plan(clinical=968, images=8000)
    assert progress.line() == "progress: images 0/8,000 (0%), clinical files 0/968"
    for _ in range(968):
        progress.finished("clinical")
    progress.finished("image")
    now[0] = 110.0
    for _ in range(1144):
        progress.finished("image")
    assert progress.line() == (
        "progress: images 1,145/8,000 (14%), clinical files 968/968, 114.5 images/s, "
        "about 1 min 0 s left"
    )
    for _ in range(8000 - 1145):
        progress.finished("image")
    assert progress.line().endswith("8,000/8,000 (100%), clinical files 968/968, 800.0 images/s")


def test_progress_lines_give_done_and_total_while_the_run_goes_on(tree):
    env = builders.graph_env(
        WAREHOUSE_BUCKET=f"file://{tree}", WAREHOUSE_PROGRESS_SECONDS="0.05", WAREHOUSE_WORKERS="1"
    )
    result = builders.python_m("warehouseloader", env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "progress: images" in line]
    assert lines, result.stderr
    assert all("/121 " in line and "clinical files " in line for line in lines), lines
    assert any("images/s" in line for line in lines)
    assert "- process_image in=" in result.stderr  # bonobo's own lines stay


def test_json_logs_are_one_object_per_line(tree):
    env = builders.graph_env(
        WAREHOUSE_BUCKET=f"file://{tree}",
        WAREHOUSE_LOG_FORMAT="json",
        WAREHOUSE_PROGRESS_SECONDS="0.05",
    )
    result = builders.python_m("warehouseloader", env=env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]
    report = json.loads(LocalStorage(tree).read("reports/warehouseloader/latest.json"))
    fields = {"time", "level", "logger", "graph", "run_id", "shard", "event", "key", "reason"}
    for record in records:
        assert fields <= set(record), record
        assert record["graph"] == "warehouseloader"
        assert record["run_id"] == report["run_id"]
    not_filed = [r for r in records if r["event"] == "not_filed"]
    assert [(r["key"], r["reason"]) for r in not_filed] == [
        ("raw-a/2021-01-02/images/garbage.dcm", "not a DICOM file")
    ]
    assert any(r["event"] == "status" and "process_image" in r["message"] for r in records)
    assert summary["event"] == "summary" and summary["exit_code"] == 0
    assert summary["run_id"] == report["run_id"]
    assert summary["counts"]["images copied"] == 120
    assert summary["not_filed"] == {"not a DICOM file": 1}


def _bonobo_error_records() -> list[logging.LogRecord]:
    """The records bonobo itself logs when a node named ``process_image`` fails on an item,
    run as the graphs run (the product's strategy)."""
    import bonobo

    from warehouse.runtime.strategy import StartedThreadPoolStrategy

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            # a copy as bonobo made it (the same record goes on to the root's handlers, whose
            # filter renames it in place when the product's logging is set up in this process)
            records.append(logging.makeLogRecord(record.__dict__))

    def extract():
        yield from range(3)

    def process_image(n):
        if n == 1:
            raise ValueError("a broken item")
        yield n

    root, bonobo_logger, keep = logging.getLogger(), logging.getLogger("bonobo"), Keep()
    level = root.level  # (bonobo.run sets it)
    bonobo_logger.addHandler(keep)
    try:
        bonobo.run(bonobo.Graph(extract, process_image), strategy=StartedThreadPoolStrategy())
    finally:
        bonobo_logger.removeHandler(keep)
        root.setLevel(level)
    return [r for r in records if r.levelno >= logging.ERROR]


def test_error_lines_name_the_product_not_bonobo():
    """A node error bonobo logs itself (driven here through bonobo, not written by hand) is
    named after the product's node."""
    from warehouse.core.run import RUN_CONTEXT
    from warehouse.runtime.logs import _RunRecords

    (record,) = _bonobo_error_records()
    # the premise: bonobo names its own module and the node's context in the message
    assert record.name.startswith("bonobo.execution")
    assert "ExecutionContext(" in record.getMessage() and "process_image" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    before = dict(RUN_CONTEXT)
    RUN_CONTEXT.update(graph="warehouseloader", run_id="r1", shard=None)
    try:
        assert _RunRecords().filter(record)
    finally:
        RUN_CONTEXT.update(before)
    assert record.name == "warehouse.warehouseloader.process_image"
    assert record.run_id == "r1" and record.event is None


# --------------------------------------------------------------------------------------------
# log and terminal injection: what an upload says never forges a line nor steers a terminal

FORGED = "INFO warehouse.warehouseloader: warehouseloader run summary: all sites OK"
CHARSET_PAYLOAD = f"X\n{FORGED}"


_BIDI_CONTROLS = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}
_BIDI_MARKS = {"LEFT-TO-RIGHT MARK", "RIGHT-TO-LEFT MARK", "ARABIC LETTER MARK"}


def is_control(char: str) -> bool:
    """What may not reach a plain line raw (the oracle, from Unicode's own data): a control
    (Cc), a line or paragraph separator, or a bidirectional control or mark."""
    if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
        return True
    return unicodedata.bidirectional(char) in _BIDI_CONTROLS or (
        unicodedata.name(char, "") in _BIDI_MARKS
    )


def test_escaped_text_has_no_control_character_left():
    """Every code point of the Basic Multilingual Plane: the escaped text is one line, holds no
    control, and only the controls changed."""
    for code in range(0x10000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue  # surrogates are not characters
        escaped = escape_controls(f"a{char}b")
        assert len(escaped.splitlines()) == 1, hex(code)
        assert not any(is_control(c) for c in escaped), hex(code)
        assert (escaped == f"a{char}b") != is_control(char), hex(code)


def test_escapes_are_the_documented_ones():
    assert escape_controls("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_controls("\x1b[2J\x1b]52;c;ZXZpbA==\x07") == "\\x1b[2J\\x1b]52;c;ZXZpbA==\\x07"
    assert escape_controls("\x00\x7f\x85\x9b") == "\\x00\\x7f\\x85\\x9b"
    assert escape_controls("a\u2028b\u2029c\u202ed\u2066") == "a\\u2028b\\u2029c\\u202ed\\u2066"
    assert escape_controls("Écija \\ Trust") == "Écija \\ Trust"  # letters and backslashes stay
    assert escape_controls("a\\nb\n", backslashes=True) == "a\\\\nb\\n"


def test_a_plain_log_line_is_one_line_whatever_its_arguments():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(plain_formatter())
    log = logging.getLogger("tests.injection")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("%s: %s", "raw-a/x\r\n.dcm", CHARSET_PAYLOAD)
        log.warning("centre \x1b[2J\x1b]52;c;ZXZpbA==\x07 \x9b\u2028 sent it")
        try:
            raise ValueError(f"bad value {CHARSET_PAYLOAD}")
        except ValueError:
            log.exception("internal error on %s", "raw-a/y.dcm")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"WARNING tests.injection: raw-a/x\\r\\n.dcm: X\\n{FORGED}"
    assert lines[1] == (
        "WARNING tests.injection: centre \\x1b[2J\\x1b]52;c;ZXZpbA==\\x07 \\x9b\\u2028 sent it"
    )
    assert lines[2] == "ERROR tests.injection: internal error on raw-a/y.dcm"
    # the traceback: indented lines, the exception's own line break escaped
    assert all(line.startswith("    ") for line in lines[3:]), lines
    assert lines[-1] == f"    ValueError: bad value X\\n{FORGED}"
    assert not any(line.startswith("INFO") for line in lines)
    assert "\x1b" not in stream.getvalue() and "\x9b" not in stream.getvalue()


def charset_image() -> tuple[str, bytes]:
    """An image whose SpecificCharacterSet holds a line break and a forged log line."""
    return image("Covid1", "DX", extra={"SpecificCharacterSet": CHARSET_PAYLOAD})


# pydicom warns about the character set while the test writes the image
unknown_encoding = pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")


UNKNOWN_ENCODING = f"Unknown encoding '{CHARSET_PAYLOAD}' - using default encoding instead"


@unknown_encoding
def test_pydicom_messages_about_a_header_are_held_with_it_not_logged(tmp_path):
    """What pydicom says while it reads a header belongs to the file: handed on with the
    header (for the run report), never a log line; converting the header says nothing more."""
    storage = LocalStorage(tmp_path)
    name, data = charset_image()
    key = f"raw-a/2021-01-02/images/{name}"
    storage.write(key, data)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(plain_formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        header = read_header(storage, key, len(data))
        image_identity(header.dataset)  # pydicom decodes with the charset again
        header_json(header.dataset)
    finally:
        root.removeHandler(handler)
    assert header.messages == (UNKNOWN_ENCODING,)
    assert stream.getvalue() == ""


@pytest.fixture
def charset_tree(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    name, data = charset_image()
    files = {
        "config.json": builders.config(["raw-a"], split=["A Trust"]),
        "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", "A Trust"),
        f"raw-a/2021-01-02/images/{name}": data,
    }
    builders.put_tree(LocalStorage(root), files)
    return root, f"raw-a/2021-01-02/images/{name}"


@unknown_encoding
def test_a_specific_character_set_cannot_forge_a_loader_log_line(charset_tree):
    """A character set quoted by pydicom's message is a note in the report, never a log line.

    The note is against the image's key, once; the log holds no line of it (nor a forged one).
    """
    root, key = charset_tree
    result = builders.python_m(
        "warehouseloader", env=builders.graph_env(WAREHOUSE_BUCKET=f"file://{root}")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert not any("pydicom" in line or "encoding" in line for line in lines), lines
    assert not any(line.startswith(FORGED) for line in lines)
    assert not any("UserWarning" in line for line in lines)
    assert "images copied: 1" in result.stdout  # the image is filed all the same
    assert "image headers pydicom warned about (see the report's notes): 1" in result.stdout
    report = json.loads((root / "reports" / "warehouseloader" / "latest.json").read_text())
    assert report["notes"] == [{"key": key, "note": f"pydicom: {UNKNOWN_ENCODING}"}]
    assert report["problems"] == []


@unknown_encoding
def test_json_logs_hold_the_payload_in_one_object(charset_tree):
    root, key = charset_tree
    env = builders.graph_env(WAREHOUSE_BUCKET=f"file://{root}", WAREHOUSE_LOG_FORMAT="json")
    result = builders.python_m("warehouseloader", env=env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    (note,) = [r for r in records if "pydicom" in r["message"]]
    assert note["message"] == f"{key}: pydicom: {UNKNOWN_ENCODING}"
    assert (note["level"], note["event"], note["key"]) == ("INFO", "note", key)


def test_the_run_summary_quotes_keys_and_reasons_on_one_line_each(monkeypatch, tmp_path):
    report = RunReport("warehouseloader", run_id="r1")
    report.count("images copied", 3)
    report.count(f"odd\n{FORGED}")
    report.fail(f"listing failed on raw-a/\x1b[2J{CHARSET_PAYLOAD}")
    summary = report.summary() + "\n  catalogue part: file:///x\r"
    stream = io.StringIO()
    summary_file = tmp_path / "summary.txt"
    monkeypatch.setenv("RUN_SUMMARY_FILE", str(summary_file))
    monkeypatch.setenv("WAREHOUSE_LOG_FORMAT", "text")
    emit_summary(summary, report, 1, stream=stream)
    write_summary_file(summary)
    expected = [
        "warehouseloader run summary",
        f"  run could not complete: listing failed on raw-a/\\x1b[2JX\\n{FORGED}",
        "  images copied: 3",
        f"  odd\\n{FORGED}: 1",
        "  not filed: 0",
        "  catalogue part: file:///x\\r",
    ]
    assert stream.getvalue().split("\n") == [*expected, ""]
    assert summary_file.read_text(encoding="utf-8").split("\n") == [*expected, ""]
