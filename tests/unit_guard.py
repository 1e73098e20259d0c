"""A pytest plugin for `make test-unit`: a test selected as a unit test may start no process.

`make test-unit` runs `pytest -p tests.unit_guard -m "not integration and not slow"`, in two
halves at once (`--unit-shard 0/2` and `1/2`: one per core). While it runs,
`subprocess.Popen` (which asyncio's subprocesses, Selenium's driver, the embedded broker and
every `kaizen ...` child go through) refuses to start anything and names the test, and the
session fails at the end even where the code under test swallowed the error. A test module
that starts processes (a broker, the gateway, the controller, a job, a browser, an echo
upstream) says so once, at its top: `pytestmark = pytest.mark.integration`.

Modules marked `integration` at their top are not even imported (their imports, torch and
transformers among them, would cost more than all the unit tests take to run).

Allowed: forked workers of multiprocessing (kaizenlm.datasets.parallel's second core for
curation), which are not programs; `git` (a snapshot's manifest records the commit with
`git rev-parse HEAD`) and `uname` (Python's `platform.processor()`), lookups of milliseconds.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

_current: list[str] = []  # the node id of the running test
_violations: list[str] = []
_original_init = subprocess.Popen.__init__
ALLOWED_PROGRAMS = {"git", "uname"}


def _refusing_init(self, args, *a, **kw):
    program = args if isinstance(args, str) else (list(args) or [""])[0]
    if str(program).split()[0].rsplit("/", 1)[-1] in ALLOWED_PROGRAMS:
        return _original_init(self, args, *a, **kw)
    test = _current[0] if _current else "(outside a test)"
    argv = args if isinstance(args, str) else " ".join(map(str, args))
    message = (f"{test} starts a process ({argv[:200]}): a unit test may not. Put "
               "`pytestmark = pytest.mark.integration` at the top of its module.")
    _violations.append(message)
    raise RuntimeError(message)


def marked_integration(path: Path) -> bool:
    """Whether a test module says `pytestmark = pytest.mark.integration` (or a list holding it)
    at its top level; read from its source, without importing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            return any(isinstance(m, ast.Attribute) and m.attr == "integration" for m in marks)
    return False


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and collection_path.is_file():
        return True if marked_integration(collection_path) else None
    return None


def pytest_addoption(parser) -> None:
    parser.addoption("--unit-shard", default=None, metavar="I/N",
                     help="run only the selected tests whose index is I modulo N (`make test-unit` runs "
                          "0/2 and 1/2 at once, one per core)")


@pytest.hookimpl(trylast=True)  # after -m has deselected the integration and slow tests
def pytest_collection_modifyitems(config, items) -> None:
    shard = config.getoption("--unit-shard")
    if not shard:
        return
    index, count = (int(x) for x in shard.split("/"))
    if not 0 <= index < count:
        raise pytest.UsageError(f"--unit-shard {shard}: want I/N with 0 <= I < N")
    keep = items[index::count]
    kept = set(map(id, keep))
    config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept])
    items[:] = keep


def pytest_configure(config) -> None:
    subprocess.Popen.__init__ = _refusing_init


def pytest_unconfigure(config) -> None:
    subprocess.Popen.__init__ = _original_init


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[:] = [item.nodeid]
    yield
    _current.clear()


def pytest_terminal_summary(terminalreporter) -> None:
    if _violations:
        terminalreporter.section("unit tests that started processes")
        for line in dict.fromkeys(_violations):
            terminalreporter.write_line(line)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _violations and exitstatus == 0:
        session.exitstatus = 1
