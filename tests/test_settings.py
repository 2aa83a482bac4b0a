"""One Settings class, its variables, and the README table made from it.

Specification:
- README.md's settings table, between `<!-- settings-table:start -->` and `<!-- settings-table:end -->`,
  is exactly `indexer.settings.markdown_table()`: every setting's variable appears in the README's
  tables exactly once, and no variable that is not a setting does; scripts/settings_table.py --check
  agrees;
- nested sections read their variables (`CLIPSEARCH_QDRANT_URL` is `settings.qdrant.url`, an
  underscore inside a field name included), top-level ones are not mistaken for sections, flags
  override variables, and every default the table shows is a value its variable accepts;
- every setting is read somewhere in indexer/, search_api/, ui/ or clipsearch/ (by its attribute
  path, e.g. `.qdrant.shards`, or its variable's name): a setting nothing reads fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from indexer.settings import ENV_ALIASES, ENV_PREFIX, Settings, markdown_table, settings_rows
from tests.clirun import REPO

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
CODE = ("indexer", "search_api", "ui", "clipsearch")


def readme() -> str:
    return (REPO / "README.md").read_text()


def setting_paths() -> dict[str, str]:
    """Attribute path (`hnsw_ef`, `qdrant.shards`) -> variable, for every setting."""
    paths = {}
    for name, info in Settings.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for sub in section.model_fields:
                paths[f"{name}.{sub}"] = f"{ENV_PREFIX}{name}_{sub}".upper()
        else:
            paths[name] = f"{ENV_PREFIX}{name}".upper()
    return paths


def test_readme_table_is_the_generated_one() -> None:
    text = readme()
    assert text.count(START) == 1 and text.count(END) == 1
    between = text.split(START)[1].split(END)[0]
    assert between.strip() == markdown_table()


def test_readme_names_each_setting_once_and_nothing_else() -> None:
    rows = re.findall(r"^\| `(CLIPSEARCH_[A-Z0-9_]+)`", readme(), flags=re.MULTILINE)
    variables = [variable for variable, _, _ in settings_rows()]
    assert len(variables) == len(set(variables))
    assert sorted(rows) == sorted(variables)
    assert set(variables) == set(setting_paths().values()) | set(ENV_ALIASES)


def test_settings_table_script_agrees() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/settings_table.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_nested_sections_read_their_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLIPSEARCH_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("CLIPSEARCH_QDRANT_API_KEY", "qdrant-secret")
    monkeypatch.setenv("CLIPSEARCH_API_KEY", "api-secret")
    monkeypatch.setenv("CLIPSEARCH_API_MAX_K", "77")
    monkeypatch.setenv("CLIPSEARCH_API_CORS_ORIGINS", '["http://a.example"]')
    monkeypatch.setenv("CLIPSEARCH_FAISS_INDEX", "hnsw")
    monkeypatch.setenv("CLIPSEARCH_HNSW_EF", "64")
    monkeypatch.setenv("CLIPSEARCH_MAX_IMAGE_PIXELS", "1234")
    s = Settings()
    assert (s.qdrant.url, s.qdrant.api_key) == ("http://qdrant:6333", "qdrant-secret")
    assert (s.api.key, s.api.max_k, s.api.cors_origins) == ("api-secret", 77, ["http://a.example"])
    assert (s.faiss.index, s.faiss.refine) == ("hnsw", "flat")
    assert (s.hnsw_ef, s.max_image_pixels) == (64, 1234)
    assert s.api.url == "http://127.0.0.1:8000" and s.qdrant.shards == 1  # the rest keep their defaults

    flagged = s.with_flags(collection="photos", model=None, home=tmp_path)
    assert (flagged.collection, flagged.home, flagged.model) == ("photos", tmp_path, s.model)
    assert flagged.qdrant.url == "http://qdrant:6333"  # flags leave the sections alone

    monkeypatch.setenv("CLIPSEARCH_FAISS_INDEX", "nonsense")
    with pytest.raises(ValueError, match="index"):
        Settings()


def test_design_document_names_for_section_settings_are_read_too(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLIPSEARCH_API_KEY", "admin")
    monkeypatch.setenv("CLIPSEARCH_READ_KEYS", "reader-1, reader-2")  # DESIGN.md's name
    assert (Settings().api.key, Settings().api.read_keys) == ("admin", ["reader-1", "reader-2"])
    monkeypatch.setenv("CLIPSEARCH_API_READ_KEYS", "reader-3")  # the section's own name wins
    assert Settings().api.read_keys == ["reader-3"]


@pytest.mark.parametrize("variable,default", [(v, d) for v, d, _ in settings_rows() if d])
def test_each_default_shown_is_accepted_by_its_variable(
    variable: str, default: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, default)
    Settings()


def code_text() -> str:
    files = [p for package in CODE for p in sorted((REPO / package).rglob("*.py"))]
    return "\n".join(p.read_text() for p in files if p != REPO / "indexer" / "settings.py")


def is_read(path: str, variable: str, code: str) -> bool:
    # `settings.api.key`, or a section handed on and read as `limits.ids`
    return bool(re.search(rf"(?:\.|\b){re.escape(path)}\b", code)) or f'"{variable}"' in code


def test_every_setting_is_read_somewhere() -> None:
    code = code_text()
    unread = [variable for path, variable in setting_paths().items() if not is_read(path, variable, code)]
    assert not unread, f"settings nothing reads (drop them, or use them): {unread}"
    assert not is_read("qdrant.no_such_field", "CLIPSEARCH_QDRANT_NO_SUCH_FIELD", code)  # it can fail
