#!/usr/bin/env python3
"""Rewrite README.md's settings table from the Settings fields (indexer.settings.markdown_table).

    python scripts/settings_table.py          # rewrite the table between the markers
    python scripts/settings_table.py --check  # exit 1, changing nothing, when it is out of date

tests/test_settings.py fails while the README and the fields differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from indexer.settings import markdown_table  # noqa: E402  (after the path: runs from a checkout)

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def with_table(readme: str, table: str) -> str:
    """The README text with `table` between the markers (each exactly once, start before end)."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise ValueError(f"README.md needs exactly one {START} followed by one {END}")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1, changing nothing, when out of date")
    check = parser.parse_args(argv).check
    readme = REPO / "README.md"
    text = readme.read_text()
    updated = with_table(text, markdown_table())
    if updated == text:
        return 0
    if check:
        print("README.md's settings table is out of date: run scripts/settings_table.py", file=sys.stderr)
        return 1
    readme.write_text(updated)
    print("README.md: settings table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
