"""docs/ARCHITECTURE.md's table "command or route -> module" equals the code: every `kaizen X`
command of kaizenlm/cli.py's COMMANDS and every HTTP route of the gateway and the controller,
with the module that holds it. Also: each admin route lives in a package's `api.py`.

The apps are created, never served: the gateway's lifespan (producer, model backend, turn
shipper) does not run, and the controller is created with start_sink=False, so no broker,
sink, scheduler or process is started; the controller opens a DuckDB file in tmp_path.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from kaizenlm import config as config_mod
from kaizenlm.cli import COMMANDS

DOC = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"
HEADER = "| command or route | process | module |"
GATEWAY, FAST, CONTROLLER, CLI = "gateway", "gateway (fast path)", "controller", "cli"

Row = tuple[str, str, str]  # (command or route, process, module file)


def module_file(module: str) -> str:
    """kaizenlm.config.cli -> kaizenlm/config/cli.py"""
    return module.replace(".", "/") + ".py"


def doc_rows() -> set[Row]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    rows: set[Row] = set()
    if HEADER not in lines:  # every row is then reported as one to add, under this header
        return rows
    for line in lines[lines.index(HEADER) + 2:]:  # header, then the |---| line
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"a row of the command/route table needs 3 cells: {line!r}"
        rows.add((cells[0], cells[1], cells[2]))
    return rows


def command_rows() -> set[Row]:
    return {(f"kaizen {name}", CLI, module_file(target.partition(":")[0])) for name, target in COMMANDS.items()}


def app_routes(app) -> list[tuple[str, str, str]]:
    """(method, path, endpoint module) of every route of a FastAPI app, included routers
    flattened (FastAPI >= 0.16x keeps them as lazy included routers; older ones flatten)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        routes = app.routes
    else:
        routes = list(iter_route_contexts(app.routes))
    out = []
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None or not endpoint.__module__.startswith("kaizenlm."):
            continue  # FastAPI's own /openapi.json, /docs, /redoc
        methods = set(route.methods or ())
        if "GET" in methods:
            methods.discard("HEAD")
        out += [(method, route.path, endpoint.__module__) for method in sorted(methods)]
    return out


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    from kaizenlm.server import controller, gateway

    home = tmp_path_factory.mktemp("home")
    cfg = config_mod.from_dict({"paths": {"home": str(home)}})
    threads = set(threading.enumerate())
    gw = gateway.create_app(cfg)
    ctl = controller.create_app(cfg, start_sink=False)
    started = set(threading.enumerate()) - threads
    assert not started, f"creating the apps started threads: {started}"
    yield gw, ctl
    ctl.state.db.close()


def route_rows(apps) -> set[Row]:
    gw, ctl = apps
    rows: set[Row] = set()
    routed = {}
    for method, path, module in app_routes(gw):
        routed[(method, path)] = module
        if not (method == "POST" and path in gw.fast_routes):
            rows.add((f"{method} {path}", GATEWAY, module_file(module)))
    for path, handler in gw.fast_routes.items():
        # The router's entry (documentation, OpenAPI) and the fast path must name one module.
        documented = routed.get(("POST", path))
        assert documented in (None, handler.__module__), (
            f"POST {path}: the gateway's fast path answers with {handler.__module__}, its router entry "
            f"with {documented}; make them the same function's module"
        )
        rows.add((f"POST {path}", FAST, module_file(handler.__module__)))
    rows |= {(f"{method} {path}", CONTROLLER, module_file(module)) for method, path, module in app_routes(ctl)}
    return rows


def _row(row: Row) -> str:
    return f"| `{row[0]}` | {row[1]} | `{row[2]}` |"


def assert_same(doc: set[Row], code: set[Row], what: str) -> None:
    add, remove = sorted(code - doc), sorted(doc - code)
    if add or remove:
        message = [f"docs/ARCHITECTURE.md's command/route table (header line {HEADER!r}) differs from the {what}:"]
        if add:
            message += ["rows to add:", *map(_row, add)]
        if remove:
            message += ["rows to remove:", *map(_row, remove)]
        pytest.fail("\n".join(message), pytrace=False)


def test_every_command_is_in_the_table():
    doc = {r for r in doc_rows() if r[1] == CLI}
    assert_same(doc, command_rows(), "command table (kaizenlm/cli.py COMMANDS)")


def test_every_command_lives_in_a_package_cli_module():
    bad = [f"kaizen {name} -> {target}" for name, target in COMMANDS.items()
           if not re.fullmatch(r"kaizenlm\.\w+\.cli:[A-Z_]+", target)]
    assert not bad, f"`kaizen X` lives in kaizenlm/<package>/cli.py: {bad}"


def test_every_route_is_in_the_table(apps):
    doc = {r for r in doc_rows() if r[1] != CLI}
    assert_same(doc, route_rows(apps), "gateway's and controller's routes")


def test_admin_routes_live_in_a_package_api_module(apps):
    # /admin/v1/<X>/... is in some kaizenlm/<package>/api.py (the table says which: /admin/v1/ab
    # is abtest's, /admin/v1/feedback, the raw table, ingest's).
    _, ctl = apps
    admin = [(method, path, module) for method, path, module in app_routes(ctl) if path.startswith("/admin/")]
    bad = [f"{method} {path} is defined in {module}, not in a kaizenlm/<package>/api.py"
           for method, path, module in admin if not re.fullmatch(r"kaizenlm\.\w+\.api", module)]
    assert len(admin) > 20, admin
    assert not bad, "\n".join(bad)


def test_the_gateway_routes_are_the_designs(apps):
    rows = route_rows(apps)
    for route, process in [("POST /v1/chat/completions", FAST), ("POST /v1/feedback", FAST),
                           ("GET /widget.js", GATEWAY), ("GET /healthz", CONTROLLER)]:
        assert any(r[0] == route and r[1] == process for r in rows), (route, process)


def test_the_layer_list_is_the_one_the_layout_test_enforces():
    from test_layout import LAYERS

    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md has no ```layers block (the layer order, top to bottom)"
    doc_layers = [sorted(line.split()) for line in block.group(1).strip().splitlines()]
    assert doc_layers == [sorted(layer) for layer in LAYERS], (
        "docs/ARCHITECTURE.md's ```layers block and LAYERS in tests/test_layout.py differ; make them the same"
    )


def test_every_package_has_a_paragraph():
    from test_layout import PACKAGE

    section = DOC.read_text(encoding="utf-8").split("## Packages", 1)[-1].split("\n## ", 1)[0]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    missing = [name for name in packages if f"- **{name}/**" not in section]
    assert not missing, f"docs/ARCHITECTURE.md, '## Packages': add a paragraph '- **<name>/** — ...' for {missing}"
    modules = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    missing = [name for name in modules if f"`{name}`" not in section]
    assert not missing, f"docs/ARCHITECTURE.md, '## Packages': name the top-level modules {missing}"
