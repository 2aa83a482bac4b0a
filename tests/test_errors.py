"""One error table (indexer.errors.ERROR_KINDS), the same meaning on both sides.

Specification:
- every error kind has a CLI exit code (not 0, 1 or 2, which are success, bugs and usage errors) and
  an HTTP status; the real `clipsearch` command, for an error of each kind it can produce, prints
  exactly one line `error: <message>` on stderr and exits with that kind's code; the API answers
  every error class of each kind with that kind's status and `{"detail": <message>}`;
- every advice in an error message (and in a setting's description) that names a flag names one
  that exists, on the command it names when it names one; every `CLIPSEARCH_*` it names is a
  setting, with a value that setting accepts; no advice names a setting without its prefix
  ("store=qdrant" is no flag and no variable).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import click
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from indexer.errors import ERROR_KINDS, ClipsearchError, ErrorKind
from indexer.locking import collection_lock
from indexer.settings import Settings, settings_rows
from tests.clirun import REPO, cli_home, run, run_json
from tests.conftest import TINY_CONFIG
from tests.corpus import noise


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Settings]:
    """A home with the tiny model and one small collection, "built", indexed by the CLI."""
    root = tmp_path_factory.mktemp("errors")
    photos = root / "photos"
    photos.mkdir()
    for seed in range(3):
        noise(seed=seed).save(photos / f"{seed}.png")
    (root / "not-an-image.png").write_text("hello")
    with cli_home(root / "home", tiny_checkpoint) as settings:
        assert run_json("index", str(photos), "--collection", "built")["embedded"] == 3
        yield settings


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("other") / "other.pt"
    torch.save(open_clip.create_model(TINY_CONFIG.stem).state_dict(), path)
    return path


def error_classes() -> list[type[ClipsearchError]]:
    """Every error class of the hierarchy, the kinds' own bases included."""
    found, todo = [], [ClipsearchError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted(set(found), key=lambda c: c.__name__)


Setup = Callable[[pytest.MonkeyPatch], AbstractContextManager[object]]
Cases = dict[ErrorKind, list[tuple[str, Setup, list[str]]]]


def cli_cases(settings: Settings, other_checkpoint: Path) -> Cases:
    """For each kind the CLI can produce: (what, the state to run it in, args) of real runs."""
    root = settings.home.parent
    photos, bad, other = str(root / "photos"), str(root / "not-an-image.png"), str(other_checkpoint)

    def bad_variable(patch: pytest.MonkeyPatch) -> AbstractContextManager[object]:
        patch.setenv("CLIPSEARCH_STORE", "nonsense")
        return nullcontext()

    def hold_lock(patch: pytest.MonkeyPatch) -> AbstractContextManager[object]:
        return collection_lock(settings.home, "built", "pytest", "wait for the test")

    def nothing(patch: pytest.MonkeyPatch) -> AbstractContextManager[object]:
        return nullcontext()

    def no_room(patch: pytest.MonkeyPatch) -> AbstractContextManager[object]:
        patch.setenv("CLIPSEARCH_MIN_FREE_DISK_MB", str(1 << 40))  # more than any disk has free
        return nullcontext()

    def damaged(patch: pytest.MonkeyPatch) -> AbstractContextManager[object]:
        target = settings.collection_dir("damaged")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(settings.collection_dir("built"), target)
        for chunk in target.glob("shard/segments/*/vector_storage-*/vectors/chunk_*.mmap"):
            with chunk.open("r+b") as f:
                f.write(os.urandom(64 << 10))
        return nullcontext()

    return {
        ErrorKind.BAD_INPUT: [
            ("a setting with a bad value", bad_variable, ["status"]),
            ("a file that is no image", nothing, ["classify", bad, "--labels", "cat,dog"]),
            ("no checkpoint", nothing, ["index", photos, "-c", "new", "--pretrained", str(root / "gone.pt")]),
        ],
        ErrorKind.NOT_FOUND: [
            ("no such collection", nothing, ["status", "--collection", "nosuch"]),
            ("no such vector", nothing, ["search", "a cat", "--collection", "built", "--vector", "nosuch"]),
        ],
        ErrorKind.CONFLICT: [("a collection being written", hold_lock, ["index", photos, "-c", "built"])],
        ErrorKind.MODEL_MISMATCH: [
            ("another model", nothing, ["index", photos, "-c", "built", "--pretrained", other])
        ],
        ErrorKind.DISK_FULL: [
            ("a disk with less free space than asked", no_room, ["index", photos, "-c", "new"])
        ],
        ErrorKind.CORRUPT: [("random bytes in the vectors", damaged, ["check", "--collection", "damaged"])],
        ErrorKind.UNAVAILABLE: [  # a real tag whose weights are not downloaded, with no hub (HF_HUB_OFFLINE)
            ("weights not downloaded", nothing,
             ["index", photos, "-c", "new", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"])
        ],
    }


# Kinds only a server gives (keys are the API's); the CLI talks to no server that asks for one yet.
API_ONLY = {ErrorKind.UNAUTHORISED, ErrorKind.FORBIDDEN}


def test_the_table_gives_every_kind_a_distinct_exit_code_and_an_error_status() -> None:
    assert set(ERROR_KINDS) == set(ErrorKind)
    codes = [o.exit_code for o in ERROR_KINDS.values()]
    assert len(set(codes)) == len(codes) and not set(codes) & {0, 1, 2}
    assert all(400 <= o.http_status < 600 for o in ERROR_KINDS.values())


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.name)
def test_each_kind_means_the_same_to_the_cli_and_the_api(
    kind: ErrorKind, home: Settings, other_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = ERROR_KINDS[kind]

    # The API: every error class of this kind, through the real handlers.
    from search_api.errors import install_error_handlers

    classes = [cls for cls in error_classes() if cls.kind is kind]
    assert classes, f"no error class of kind {kind.name}"
    app = FastAPI()
    install_error_handlers(app)
    raised = {cls.__name__: cls(f"{cls.__name__} happened; do something") for cls in classes}

    @app.get("/raise/{name}")
    def raise_it(name: str) -> None:
        raise raised[name]

    with TestClient(app) as client:
        for name, exc in raised.items():
            answer = client.get(f"/raise/{name}")
            assert (answer.status_code, answer.json()) == (expected.http_status, {"detail": str(exc)}), name

    # The CLI: a real run for each way this kind is reached.
    cases = cli_cases(home, other_checkpoint)
    assert set(cases) | API_ONLY == set(ErrorKind)  # a new kind needs a case here
    for what, setup, args in cases.get(kind, []):
        with monkeypatch.context() as patch, setup(patch):  # the variables it sets end with it
            done = run(*args, check=False, timeout=120)
        assert done.returncode == expected.exit_code, f"{what}: {done.returncode}\n{done.stderr}"
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, f"{what}: {done.stderr}"


def test_a_missing_collection_is_a_404_from_the_real_app(tmp_path: Path) -> None:
    from search_api.app import create_app

    settings = Settings(home=tmp_path / "home")
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/images/00000000-0000-0000-0000-000000000000")
    assert answer.status_code == ERROR_KINDS[ErrorKind.NOT_FOUND].http_status
    assert "default" in answer.json()["detail"]


# --- advice names what exists -------------------------------------------------------------------

ADVICE_NAME = re.compile(r"ADVICE|MESSAGE|HINT|REASON", re.IGNORECASE)
FLAG = re.compile(r"--[a-z][a-z0-9-]*")
VARIABLE = re.compile(r"\bCLIPSEARCH_[A-Z0-9_]+(?:=([\w.:/-]+))?")
TOKEN = re.compile(r"--[a-z][a-z0-9-]*|[A-Za-z][\w-]*")


def advice_strings() -> list[tuple[str, str]]:
    """(where, text) of the error messages in indexer/ and search_api/: the strings in `raise`
    statements, in advice constants and keywords (`ADVICE = ...`, `advice=...`), and the module
    constants those use; plus every setting's description (the README shows them)."""
    found = []
    for package in ("indexer", "search_api"):
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            constants = {
                target.id: node.value.value
                for node in ast.walk(tree)
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
                for target in node.targets
                if isinstance(target, ast.Name)
            }  # fmt: skip
            for node in ast.walk(tree):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    texts = _strings(node.exc, constants)
                elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and ADVICE_NAME.search(t.id) for t in node.targets
                ):
                    texts = _strings(node.value, constants)
                elif isinstance(node, ast.keyword) and node.arg and ADVICE_NAME.search(node.arg):
                    texts = _strings(node.value, constants)
                else:
                    continue
                where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
                found += [(where, text) for text in texts]
    found += [(f"settings: {variable}", meaning) for variable, _, meaning in settings_rows()]
    return found


def _strings(node: ast.AST, constants: dict[str, str]) -> list[str]:
    out = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            out.append(sub.value)
        elif isinstance(sub, ast.Name) and sub.id in constants:
            out.append(constants[sub.id])
    return out


def cli_flags() -> dict[str, set[str]]:
    """Each clipsearch command (by name) and its flags, by click's own introspection."""
    from clipsearch.cli import main

    flags: dict[str, set[str]] = {}

    def walk(command: click.Command) -> None:
        names = flags.setdefault(command.name or "", set())
        context = click.Context(command, info_name=command.name)
        for param in command.get_params(context):  # click's own --help included
            if isinstance(param, click.Option):
                names.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
        if isinstance(command, click.Group):  # as --help lists them: lazily loaded ones included
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None, f"{name} is listed but cannot be loaded"
                walk(sub)

    walk(main)
    return flags


def named_command(tokens: list[str], at: int, commands: set[str]) -> str | None:
    """The command a flag belongs to when the text names one: `serve --watch FOLDER`,
    `clipsearch index SOURCE --collection C` (placeholders and other flags in between)."""
    i = at - 1
    while i >= 0 and (tokens[i].startswith("--") or tokens[i].isupper()):
        i -= 1
    return tokens[i] if i >= 0 and tokens[i] in commands else None


def test_every_advice_names_real_flags_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = cli_flags()
    every_flag = set().union(*flags.values())
    variables = {variable for variable, _, _ in settings_rows()}
    bare = re.compile(
        r"(?<![\w-])(" + "|".join(v.removeprefix("CLIPSEARCH_").lower() for v in variables) + r")=\w"
    )
    advice = advice_strings()
    assert len(advice) > 20  # the walk finds the messages at all
    wrong = []
    for where, text in advice:
        tokens = TOKEN.findall(text)
        for at, token in enumerate(tokens):
            if not token.startswith("--"):
                continue
            command = named_command(tokens, at, set(flags) - {"clipsearch", "main"})
            if command and token not in flags[command]:
                wrong.append(f"{where}: `{command}` has no {token}: {text!r}")
            elif token not in every_flag:
                wrong.append(f"{where}: no command has {token}: {text!r}")
        for match in VARIABLE.finditer(text):
            variable, value = match.group(0).partition("=")[0], match.group(1)
            if variable not in variables:
                wrong.append(f"{where}: no setting {variable}: {text!r}")
            elif value is not None:
                with monkeypatch.context() as patch:
                    patch.setenv(variable, value)
                    try:
                        Settings()
                    except ValueError as exc:
                        wrong.append(f"{where}: {variable}={value} is refused ({exc}): {text!r}")
        for match in bare.finditer(text):
            wrong.append(f"{where}: write CLIPSEARCH_{match.group(1).upper()}=...: {text!r}")
    assert not wrong, "\n".join(wrong)


def test_the_advice_walk_catches_a_wrong_flag() -> None:
    """The check above can fail: a flag on the wrong command is told apart from a right one."""
    flags = cli_flags()
    commands = set(flags)
    tokens = TOKEN.findall("use `clipsearch status --watch FOLDER`, or serve --watch FOLDER")
    owners = [named_command(tokens, i, commands) for i, t in enumerate(tokens) if t == "--watch"]
    assert owners == ["status", "serve"]
    assert "--watch" not in flags["status"] and "--watch" in flags["serve"]
    assert FLAG.findall("--model/--pretrained") == ["--model", "--pretrained"]
