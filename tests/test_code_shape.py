"""How the code reads (../shared/docs/STYLE.md), checked where a rule can be checked.

- one concept per module: no module past 400 lines (the benchmarks and scripts too);
- layers: inference, model and protocol code never imports FastAPI or Starlette;
- the data plane's public methods say what they do (a docstring each);
- every module's ``__all__`` names only what it defines.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
from testkit import REPO

from service.dataplane import DataPlane

PACKAGES = ("service", "model_export", "cnn_client")
MODULES = sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))
MAX_LINES = 400
# The line rule also holds for the code that measures and draws, which is not imported here.
# (benchmarks/results/raw holds old copies of the service: not this code.)
SIZED = MODULES + sorted(
    p
    for folder in ("benchmarks", "benchmarks/peers", "scripts")
    for p in (REPO / folder).glob("*.py")
)
# No HTTP below the API layer (service/api) and the server that runs it.
HTTP_FREE = [
    p
    for p in MODULES
    if p.parts[-2] in ("service", "v2")
    and p.name not in ("app.py", "server.py", "connections.py", "cli.py")
]


def _name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


@pytest.mark.parametrize("path", SIZED, ids=_name)
def test_no_module_is_past_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{_name(path)} has {lines} lines: split it by responsibility"


@pytest.mark.parametrize("path", HTTP_FREE, ids=_name)
def test_inference_and_protocol_code_never_imports_the_web_framework(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert not imported & {"fastapi", "starlette", "uvicorn"}, _name(path)


def test_every_public_method_of_the_data_plane_has_a_docstring() -> None:
    public = [
        name
        for name, member in inspect.getmembers(DataPlane)
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
    ]
    assert public
    missing = [name for name in public if not inspect.getdoc(getattr(DataPlane, name))]
    assert not missing, f"DataPlane methods without a docstring: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_all_names_only_what_the_module_defines(path: Path) -> None:
    module = importlib.import_module(_name(path).removesuffix(".__init__"))
    for name in getattr(module, "__all__", []):
        assert hasattr(module, name), f"{_name(path)}.__all__ names {name!r}, which is not there"
