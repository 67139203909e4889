"""The package's public surface: __all__, the error tree, typing, and what importing costs."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import cnn_client
from cnn_client import errors

REPO = Path(__file__).resolve().parents[2]


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


@pytest.mark.parametrize("module", [cnn_client, errors], ids=["cnn_client", "errors"])
def test_every_name_in_all_exists(module: types.ModuleType) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    assert len(set(module.__all__)) == len(module.__all__)


def test_every_public_name_is_in_all() -> None:
    assert _public_names(cnn_client) == set(cnn_client.__all__)


def test_errors_module_exports_exactly_its_exceptions() -> None:
    defined = {
        name
        for name in _public_names(errors)
        if isinstance(getattr(errors, name), type)
        and getattr(errors, name).__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)
    assert set(errors.__all__) <= set(cnn_client.__all__)


def test_error_tree_matches_the_docstring() -> None:
    tree = {
        "NotFoundError": "CnnServeError",
        "InvalidInputError": "CnnServeError",
        "TooLargeError": "CnnServeError",
        "UnauthorizedError": "CnnServeError",
        "ServerError": "CnnServeError",
        "UnavailableError": "ServerError",
        "CnnServeConnectionError": "CnnServeError",
        "CnnServeTimeoutError": "CnnServeConnectionError",
        "InvalidResponseError": "CnnServeError",
    }
    assert set(tree) | {"CnnServeError"} == set(errors.__all__)
    doc = errors.__doc__ or ""
    for child, parent in tree.items():
        assert getattr(errors, child).__bases__ == (getattr(errors, parent),)
        assert child in doc
    assert errors.CnnServeError.__bases__ == (Exception,)


def test_public_api_has_docstrings() -> None:
    undocumented = [name for name in cnn_client.__all__ if name != "ImageInput"]
    undocumented = [name for name in undocumented if not getattr(cnn_client, name).__doc__]
    for cls in (cnn_client.Client, cnn_client.AsyncClient):
        undocumented += [
            f"{cls.__name__}.{name}"
            for name, member in vars(cls).items()
            if not name.startswith("_") and callable(member) and not member.__doc__
        ]
    assert undocumented == []


def test_async_client_has_the_same_methods_and_signatures() -> None:
    def methods(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(member).parameters)
            for name, member in vars(cls).items()
            if not name.startswith("_") and inspect.isfunction(member)
        }

    sync, asynchronous = methods(cnn_client.Client), methods(cnn_client.AsyncClient)
    sync["aclose"] = sync.pop("close")
    assert sync == asynchronous
    for name in asynchronous:
        assert inspect.iscoroutinefunction(getattr(cnn_client.AsyncClient, name))
    options = inspect.signature(cnn_client.Client).parameters
    assert next(iter(options)) == "base_url"
    for name in ("timeout", "api_key", "retries", "transport"):
        assert options[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_results_are_frozen_dataclasses() -> None:
    prediction = cnn_client.Prediction(index=9, label="Ankle boot", probability=0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prediction.label = "Bag"  # type: ignore[misc]
    for name in (
        "Prediction",
        "Classification",
        "OutOfDistribution",
        "FeatureMap",
        "Explanation",
        "HeatmapGrid",
        "ModelInfo",
        "ReceptiveField",
    ):
        cls = getattr(cnn_client, name)
        assert dataclasses.is_dataclass(cls)
        assert getattr(cls, "__dataclass_params__").frozen  # noqa: B009


def test_package_is_typed() -> None:
    assert (Path(cnn_client.__file__).parent / "py.typed").is_file()


def _run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_package_imports_nothing_heavy() -> None:
    out = _run_python(
        """
        import json, sys
        import cnn_client
        heavy = ["torch", "onnxruntime", "fastapi", "PIL", "typer", "cnn_client.cli",
                 "service", "model_export", "starlette", "pydantic"]
        print(json.dumps([name for name in heavy if name in sys.modules]))
        """
    )
    assert json.loads(out) == []


def test_building_the_cli_imports_no_server_or_training_code() -> None:
    out = _run_python(
        """
        import json, sys
        from cnn_client.cli import build_app
        build_app()
        print(json.dumps([name for name in ("torch", "onnxruntime", "fastapi", "onnx", "PIL")
                          if name in sys.modules]))
        """
    )
    assert json.loads(out) == []


def test_client_and_cli_work_without_the_server_and_training_dependencies() -> None:
    """What `pip install cnnserve` gives: no torch, onnxruntime, fastapi, pydantic or PIL."""
    out = _run_python(
        """
        import importlib.abc, json, sys

        BLOCKED = {"torch", "onnxruntime", "fastapi", "starlette", "pydantic",
                   "pydantic_settings", "uvicorn", "onnx", "PIL", "multipart", "orjson"}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is not installed")
                return None

        sys.meta_path.insert(0, Block())
        import httpx, numpy as np
        import cnn_client

        def handler(request):
            body = {"model": "m", "model_version": "1", "results": [
                {"filename": "image-0.png",
                 "predictions": [{"index": 3, "label": "Dress", "probability": 0.7}]}]}
            return httpx.Response(200, json=body)

        with cnn_client.Client("http://x", transport=httpx.MockTransport(handler)) as client:
            result = client.classify(np.zeros((28, 28), np.uint8), model="m")

        import typer
        from cnn_client.cli import build_app
        commands = sorted(typer.main.get_command(build_app()).commands)
        print(json.dumps({"label": result.top.label, "commands": commands}))
        """
    )
    report = json.loads(out)
    assert report["label"] == "Dress"
    assert {"classify", "feature-maps", "explain", "models", "health"} <= set(report["commands"])
