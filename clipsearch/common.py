"""What every clipsearch command shares: options, settings from flags, JSON output, error printing.

Command modules (cli.py, vectors.py, backup.py) import this module and nothing else of clipsearch,
so that no two of them import each other.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError

from indexer.durable import disk_full_message, is_disk_full
from indexer.errors import BadInput, ClipsearchError, DiskFull, outcome
from indexer.settings import ENV_PREFIX, Settings

F = TypeVar("F", bound=Callable[..., Any])


def settings_from_flags(**flags: Any) -> Settings:
    """CLIPSEARCH_* variables and defaults, overridden by the flags that were given (not None)."""
    try:
        settings = Settings()
    except ValidationError as exc:  # a bad variable is the user's to fix: name it
        raise BadInput(_describe_settings_error(exc)) from None
    return settings.with_flags(**flags)


def _describe_settings_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        variable = ENV_PREFIX + "_".join(str(p) for p in error["loc"]).upper()
        parts.append(f"{variable}: {error['msg']}")
    return "; ".join(parts)


def emit(data: Any) -> None:
    """One JSON document on stdout (the --json contract)."""
    click.echo(json.dumps(data, ensure_ascii=False))


def fail(exc: ClipsearchError) -> NoReturn:
    """One line on stderr and the exit code of the error's kind (indexer.errors.ERROR_KINDS)."""
    print_error(exc.message)
    sys.exit(outcome(exc).exit_code)  # type: ignore[union-attr]  # ours, so never None


def print_error(message: str) -> None:
    click.echo("error: " + " ".join(message.splitlines()), err=True)


class Group(click.Group):
    """The command group: errors a user can act on become one line and their kind's exit code;
    anything else is a bug and keeps its traceback. Commands may live in modules imported only when
    one of them is run or listed (`add_lazy_commands`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = {}

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClipsearchError as exc:
            fail(exc)
        except OSError as exc:  # a full disk met outside the stores' checks (a model export, an output file)
            if not is_disk_full(exc):
                raise
            folder = Path(exc.filename).parent if exc.filename else Path.cwd()
            fail(DiskFull(disk_full_message(folder, "this command", None, None)))

    def add_lazy_commands(self, module: str, names: list[str]) -> None:
        """The commands `names`, found in `module`'s COMMANDS when first needed."""
        self.lazy.update(dict.fromkeys(names, module))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            for command in importlib.import_module(self.lazy[name]).COMMANDS:
                self.add_command(command)
        return super().get_command(ctx, name)


def collection_option(func: F) -> F:
    return click.option(
        "--collection", "-c", default=None, help="Collection name [default: CLIPSEARCH_COLLECTION]."
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(func)


def model_options(func: F) -> F:
    """--model, --pretrained, --device: the model for new collections and vectors (existing ones use
    the model recorded with them unless these are given)."""
    for option in reversed(
        [
            click.option(
                "--model", default=None, help="open_clip architecture name or model-config JSON path."
            ),
            click.option(
                "--pretrained", default=None, help="open_clip pretrained tag or local checkpoint path."
            ),
            click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None),
        ]
    ):
        func = option(func)
    return func


def describe_model(model: dict[str, Any] | None) -> str:
    """A recorded model identity (ModelIdentity.to_dict()) in a few words."""
    if not model:
        return "none"
    weights = model.get("weights") or "random weights"
    return f"{model.get('architecture', '?')} ({weights}, {model.get('dim', '?')}-d)"
