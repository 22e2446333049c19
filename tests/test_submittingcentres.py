"""End-to-end tests of the submittingcentres graph on both backends.

The expected centres are written down here from the tree: every ``SubmittingCentre`` of a
readable clinical file under a configured prefix, sorted, once each.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse import submittingcentres
from warehouse.core.config import Settings
from warehouse.storage.base import Storage
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage
from warehouse.storage.wrappers import DelegatingStorage
from warehouse.synthetic import SITES, generate_tree

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

EXPECTED = ["Alpha Trust", "Beta Trust", "Gamma Hospitals NHS Trust", "Écija Trust"]
CLINICAL_KEYS = {
    "raw-a/2021-01-01/data/Covid1_data.json",
    "raw-a/2021-02-01/data/Covid1_status.json",
    "raw-b/2021-01-05/data/Covid2_status.json",
    "raw-b/2021-01-05/data/Covid3_data.json",
    "raw-b/2021-01-06/data/Covid4_status.json",
    "raw-b/2021-01-06/data/Covid5_status.json",
    "raw-b/2021-01-07/data/Covid1_data.json",
}
PROBLEMS = {
    "raw-b/2021-01-05/data/Covid3_data.json": "invalid JSON",
    "raw-b/2021-01-06/data/Covid4_status.json": "no SubmittingCentre",
}


def raw_tree() -> dict[str, bytes]:
    """Two configured prefixes, one unlisted, bad files, a patient sent by two centres."""
    _, dicom = image("Covid1")
    return {
        "config.json": builders.config(["raw-a/", "raw-b"], split=["Alpha Trust"]),
        # Covid1: two uploads at raw-a, a third from another centre at raw-b.
        "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", "Beta Trust"),
        "raw-a/2021-02-01/data/Covid1_status.json": clinical("Covid1", "Alpha Trust"),
        "raw-b/2021-01-07/data/Covid1_data.json": clinical("Covid1", "Écija Trust"),
        "raw-b/2021-01-05/data/Covid2_status.json": clinical("Covid2", "Gamma Hospitals NHS Trust"),
        "raw-b/2021-01-05/data/Covid3_data.json": b'{"SubmittingCentre": "Broken Trust",',
        "raw-b/2021-01-06/data/Covid4_status.json": clinical("Covid4", "", SwabStatus=0),
        "raw-b/2021-01-06/data/Covid5_status.json": clinical("Covid5", "Beta Trust"),
        # Never read: an image, a file outside the layout, and an unlisted prefix.
        "raw-b/2021-01-06/images/x.dcm": dicom,
        "raw-b/2021-01-06/notes.json": clinical("Covid6", "Notes Trust"),
        "raw-c/2021-01-01/data/Covid9_data.json": clinical("Covid9", "Zeta Trust"),
        "training/data/Covid7/data_2021-01-01.json": clinical("Covid7", "Warehouse Trust"),
    }


class CountingStorage(DelegatingStorage):
    """Counts the reads of each key."""

    def __init__(self, inner: Storage):
        self.inner = inner
        self.url = inner.url
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def list(self, prefix):
        return self.inner.list(prefix)

    def list_folders(self, prefix):
        return self.inner.list_folders(prefix)

    def read(self, key):
        with self._lock:
            self.reads[key] += 1
        return self.inner.read(key)

    def read_range(self, key, start, end):
        raise AssertionError("submittingcentres reads whole clinical files only")

    def write(self, key, data, content_type="application/json"):
        raise AssertionError("submittingcentres never writes")

    def copy(self, source_key, target_key, size=None):
        raise AssertionError("submittingcentres never writes")

    def processed(self):
        raise AssertionError("submittingcentres has no processed store")


def run_graph(storage: Storage, **settings):
    services = submittingcentres.get_services(
        settings=Settings(bucket=storage.url, **settings), storage=storage
    )
    return submittingcentres.run(services), services["state"]


@pytest.mark.parametrize("workers", [1, 32])
def test_centres_in_process_read_each_file_once(tmp_path, capsys, workers):
    (tmp_path / "bucket").mkdir()
    local = LocalStorage(tmp_path / "bucket")
    builders.put_tree(local, raw_tree())
    store = CountingStorage(local)

    code, state = run_graph(store, workers=workers)

    assert code == 0
    printed = capsys.readouterr()
    assert printed.out == "".join(f"{c}\n" for c in EXPECTED)
    assert store.reads == Counter({"config.json": 1, **dict.fromkeys(CLINICAL_KEYS, 1)})
    problems = {p["key"]: p["reason"] for p in state.report.problems}
    assert problems == PROBLEMS
    for key, reason in PROBLEMS.items():
        assert f"{reason}: {key}" in printed.err
    for node in ("load_config", "extract_raw_data_files", "SubmittingCentreExtractor"):
        assert f"- {node} in=" in printed.err
    assert "submittingcentres run summary" in printed.err


def test_bonobo_run_local_prints_only_the_centres_on_stdout(tmp_path):
    (tmp_path / "bucket").mkdir()
    store = LocalStorage(tmp_path / "bucket")
    builders.put_tree(store, raw_tree())
    before = builders.snapshot(store)
    result = builders.bonobo_run("submittingcentres", store.root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"{c}\n" for c in EXPECTED)
    assert "- SubmittingCentreExtractor in=5 out=4" in result.stderr
    assert "invalid JSON: raw-b/2021-01-05/data/Covid3_data.json" in result.stderr
    assert builders.snapshot(store) == before
    assert not list(store.list("reports/"))


def test_python_m_on_s3_over_http(s3_bucket):
    store = S3Storage(s3_bucket, workers=8)
    builders.put_tree(store, raw_tree())
    result = builders.python_m(
        "submittingcentres", [], builders.graph_env(WAREHOUSE_BUCKET=s3_bucket)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"{c}\n" for c in EXPECTED)
    assert "no SubmittingCentre: raw-b/2021-01-06/data/Covid4_status.json" in result.stderr


def test_the_demo_tree_gives_the_centres_of_the_listed_prefixes(tmp_path, capsys):
    summary = generate_tree(tmp_path / "bucket", patients=12, images=0, seed=3)
    listed = {site.centre for site in SITES if site.kind != "unlisted"}
    assert listed == {c for c, s in summary["sites"].items() if s["uploader"] != "raw-sheffield"}
    code, _ = run_graph(LocalStorage(tmp_path / "bucket"))
    assert code == 0
    assert capsys.readouterr().out.splitlines() == sorted(listed)


@pytest.mark.parametrize(
    "config, code, message",
    [
        (None, 2, "no config.json"),
        (b"{not json", 2, "not valid JSON"),
        (b'{"raw_prefixes": ["raw-a"], "training_percentage": 50}', 0, ""),
    ],
)
def test_config_problems_stop_with_a_clear_message(tmp_path, config, code, message):
    (tmp_path / "bucket").mkdir()
    store = LocalStorage(tmp_path / "bucket")
    files = raw_tree()
    del files["config.json"]
    if config is not None:
        files["config.json"] = config
    builders.put_tree(store, files)
    result = builders.python_m(
        "submittingcentres", [], builders.graph_env(WAREHOUSE_BUCKET=f"file://{store.root}")
    )
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ("" if code else "Alpha Trust\nBeta Trust\n")


def test_no_bucket_and_help():
    result = builders.python_m("submittingcentres", [], builders.graph_env())
    assert result.returncode == 2
    assert "WAREHOUSE_BUCKET" in result.stderr and result.stdout == ""
    result = builders.python_m("submittingcentres", ["--help"], builders.graph_env())
    assert result.returncode == 0
    for name in ("WAREHOUSE_BUCKET", "WAREHOUSE_WORKERS", "AWS_ENDPOINT_URL", "standard output"):
        assert name in result.stdout


# Centre names written to forge lines and steer the operator's terminal, and what standard
# output must show for each: one line, its controls as backslash escapes, backslashes doubled.
HOSTILE_CENTRES = {
    "Evil\nsubmittingcentres run summary": "Evil\\nsubmittingcentres run summary",
    "Over\rwrite": "Over\\rwrite",
    "Clear \x1b[2J Trust": "Clear \\x1b[2J Trust",
    "Clip \x1b]52;c;cm0gLXJmIH4=\x07 Trust": "Clip \\x1b]52;c;cm0gLXJmIH4=\\x07 Trust",
    "CSI \x9b2J Trust": "CSI \\x9b2J Trust",
    "Evil\\nsubmittingcentres run summary": "Evil\\\\nsubmittingcentres run summary",
}


def test_hostile_centre_names_print_one_escaped_line_each(tmp_path):
    (tmp_path / "bucket").mkdir()
    store = LocalStorage(tmp_path / "bucket")
    files = {"config.json": builders.config(["raw-a"], split=["Alpha Trust"])}
    for n, centre in enumerate(["Alpha Trust", *HOSTILE_CENTRES]):
        files[f"raw-a/2021-01-01/data/Covid{n}_data.json"] = clinical(f"Covid{n}", centre)
    builders.put_tree(store, files)
    result = subprocess.run(
        [str(BIN / "python"), "-m", "warehouse.submittingcentres"],
        cwd=REPO,
        env=builders.graph_env(WAREHOUSE_BUCKET=f"file://{store.root}"),
        capture_output=True,
        timeout=120,
        check=False,
    )  # bytes: text mode would turn a carriage return into a line break
    assert result.returncode == 0, result.stderr
    expected = sorted(["Alpha Trust", *HOSTILE_CENTRES.values()])
    assert result.stdout.decode("utf-8").split("\n") == [*expected, ""]
    assert b"\r" not in result.stdout and b"\x1b" not in result.stdout
    assert "\x9b" not in result.stdout.decode("utf-8")
    assert "submitting centres: 7" in result.stderr.decode("utf-8")
