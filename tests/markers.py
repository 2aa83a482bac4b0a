"""Which tests are end-to-end, found from their code: conftest marks them `e2e` at collection.

A test is end-to-end when it starts something outside its own Python frame: a process (the CLI through
tests/clirun.py, any `subprocess`), a server on a loopback port (uvicorn, http.server, the VLM and
image-host stand-ins), a browser (playwright), the Streamlit UI (AppTest, `streamlit run`) or a Ray
cluster. That is read from the test function and every fixture it uses, following the helpers they
call in tests/ and scripts/ (functions, and the methods of classes) down to a reference to one of
`STARTERS`. Nothing is listed by hand per test, so a new test is classified as it is written; only
`E2E_MODULES` names whole modules, for what the code walk cannot see.

It reads references, not calls: code that only names a starter counts too, erring towards end-to-end.

Why the code and not the file: unit and end-to-end tests share files (a module's pure checks sit
beside its CLI run), and a fast loop should keep the pure ones.
"""

from __future__ import annotations

import dis
import importlib
import inspect
import sys
import types
from collections.abc import Iterable
from typing import Any

# Modules whose use means a process, a server, a browser or a cluster is started.
STARTERS = ("subprocess", "multiprocessing", "uvicorn", "http.server", "socketserver", "playwright",
            "streamlit.testing", "ray",
            # the front ends driven in-process: the CLI's and the HTTP API's own test clients
            "click.testing", "starlette.testclient", "fastapi.testclient")
# Where helpers live whose code is followed (the project's own test and benchmark helpers).
FOLLOWED = ("tests", "scripts")
# Whole modules that are end-to-end although no single reference says so (none today).
E2E_MODULES: frozenset[str] = frozenset()


def _under(name: str | None, prefixes: Iterable[str]) -> bool:
    return bool(name) and any(name == p or name.startswith(f"{p}.") for p in prefixes)


def _code_objects(code: types.CodeType) -> Iterable[types.CodeType]:
    """`code` and the code of every function, lambda and comprehension inside it."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _referenced(func: types.FunctionType) -> Iterable[tuple[str | None, Any]]:
    """(module name, object) for each global `func`'s code loads, each `module.attribute` it loads, and
    each module and name it imports inside itself (`from tests.helpers import serve` in a fixture)."""
    names = func.__globals__
    builtins = names.get("__builtins__", {})
    for code in _code_objects(func.__code__):
        loaded: Any = None
        importing: Any = None  # the module of the last IMPORT_NAME, which its IMPORT_FROMs read
        for instruction in dis.get_instructions(code):
            op, arg = instruction.opname, instruction.argval
            if op in ("LOAD_GLOBAL", "LOAD_NAME"):
                loaded = names.get(arg, builtins.get(arg) if isinstance(builtins, dict) else None)
                if loaded is not None:
                    yield _module_of(loaded), loaded
                continue
            if op == "IMPORT_NAME":
                loaded = importing = _import(arg) if _under(arg, FOLLOWED) else sys.modules.get(arg)
                yield arg, loaded
                continue
            source = importing if op == "IMPORT_FROM" else loaded
            if op in ("LOAD_ATTR", "LOAD_METHOD", "IMPORT_FROM") and isinstance(source, types.ModuleType):
                attribute = getattr(source, arg, None)
                if attribute is not None:
                    yield _module_of(attribute), attribute
            loaded = None


def _import(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _functions_of(obj: Any) -> list[types.FunctionType]:
    """The plain functions behind a function, a wrapped function (fixtures, contextmanagers) or a class."""
    if isinstance(obj, type):
        found = []
        for member in vars(obj).values():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            found += _functions_of(member) if inspect.isfunction(member) else []
        return found
    if inspect.isfunction(obj):
        wrapped = getattr(obj, "__wrapped__", None)
        return [obj, *(_functions_of(wrapped) if wrapped is not None else [])]
    return []


def _module_of(obj: Any) -> str | None:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else None


def _subclasses_a_starter(obj: Any) -> bool:
    """A class of the tests' own built on a server class (`class FetchServer(ThreadingHTTPServer)`)."""
    return isinstance(obj, type) and any(_under(base.__module__, STARTERS) for base in obj.__mro__[1:])


def starts_something(*objs: Any) -> bool:
    """Whether any of these functions (or classes) reaches a `STARTERS` module, directly or through the
    tests' and scripts' own helpers."""
    if any(_subclasses_a_starter(obj) for obj in objs):
        return True
    seen: set[int] = set()
    todo = [f for obj in objs for f in _functions_of(obj)]
    while todo:
        func = todo.pop()
        if id(func) in seen:
            continue
        seen.add(id(func))
        for module, obj in _referenced(func):
            if _under(module, STARTERS) or _subclasses_a_starter(obj):
                return True
            if _under(module, FOLLOWED) and not isinstance(obj, types.ModuleType):
                todo += _functions_of(obj)
    return False


def is_end_to_end(item: Any) -> bool:
    """Whether a collected pytest item is end-to-end: its module is listed, or its function or a fixture
    it uses starts something."""
    module = getattr(getattr(item, "module", None), "__name__", "")
    if module in E2E_MODULES:
        return True
    info = getattr(item, "_fixtureinfo", None)
    fixtures = [defs[-1].func for defs in (info.name2fixturedefs.values() if info else []) if defs]
    return starts_something(getattr(item, "function", None), *fixtures)
