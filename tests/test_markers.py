"""Specification of the `e2e` marker (tests/markers.py, set by tests/conftest.py): a test is end-to-end
exactly when it, a fixture it uses, or a helper of tests/ or scripts/ they call starts a process, a
server, a browser, the UI or a Ray cluster, or drives the CLI or the API through their test clients;
`bash scripts/test.sh --fast` leaves those out, with the hand-set `slow` ones."""

from __future__ import annotations

import subprocess
import sys
from http.server import ThreadingHTTPServer
from pathlib import Path

from tests.clirun import run, wait_for
from tests.helpers import make_settings, serve
from tests.markers import starts_something

REPO = Path(__file__).resolve().parents[1]


def calls_the_cli() -> None:
    run("status")


def through_a_helper() -> None:
    calls_the_cli()


def pure() -> None:
    make_settings(Path("home"), Path("weights.pt"))
    wait_for(lambda: True, 1, "nothing")


def spawns() -> None:
    subprocess.run(["true"], check=True)


def serves() -> None:
    with serve(object()):
        pass


def imports_the_ui_driver_inside() -> None:
    from streamlit.testing.v1 import AppTest

    AppTest.from_file("app.py")


class StandIn(ThreadingHTTPServer):
    pass


def uses_a_stand_in_server() -> None:
    StandIn(("127.0.0.1", 0), None)


def test_what_starts_something_is_end_to_end() -> None:
    for starter in (calls_the_cli, through_a_helper, spawns, serves, imports_the_ui_driver_inside,
                    uses_a_stand_in_server, StandIn):
        assert starts_something(starter), starter.__name__


def test_pure_code_is_not() -> None:
    assert not starts_something(pure)
    assert not starts_something(lambda: sorted([3, 1, 2]))


def test_collection_marks_by_the_code_not_the_file() -> None:
    """test_cli_e2e.py holds CLI runs beside pure checks; test_where.py only parses."""
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-m", "e2e",
         "tests/test_cli_e2e.py", "tests/test_where.py"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    e2e = {line for line in listed.stdout.splitlines() if "::" in line}
    assert "tests/test_cli_e2e.py::test_classify_scores_labels_best_first" in e2e
    assert "tests/test_cli_e2e.py::test_command_modules_are_declared_with_the_commands_they_hold" not in e2e
    assert e2e and not [test for test in e2e if test.startswith("tests/test_where.py")]
