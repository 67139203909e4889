"""The ``cnnserve`` command line: classify, feature-maps, explain, models and health, plus the
commands other packages register (train, export... from model_export; serve from service).

Exit codes: 0 success, 1 the server said no or could not be reached, 2 a usage error.
Errors are one ``error: ...`` line on stderr; set ``CNNSERVE_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from cnn_client import _render
from cnn_client._client import Client
from cnn_client.errors import CnnServeError

__all__ = ["build_app", "main"]

logger = logging.getLogger("cnn_client")

DEFAULT_URL = "http://127.0.0.1:8000"
# Packages that add commands when installed; each module has `register(app)`.
PLUGIN_MODULES = ("model_export.cli", "service.cli")

# Typer >= 0.20 vendors click: take its exception classes from wherever BadParameter lives.
_click_errors: Any = sys.modules[typer.BadParameter.__module__]
_UsageError: type[Exception] = _click_errors.UsageError
_ClickException: type[Exception] = _click_errors.ClickException
_NoArgsIsHelpError: type[Exception] = getattr(_click_errors, "NoArgsIsHelpError", _UsageError)

Url = Annotated[str, typer.Option("--url", envvar="CNNSERVE_URL", help="the server")]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="CNNSERVE_API_KEY", help="sent as a Bearer token"),
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
Model = Annotated[str, typer.Option("--model", "-m", help="model name, e.g. lenet5-fashion")]
Version = Annotated[
    str | None, typer.Option("--version", help="model version; default: the one served")
]
ImageFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="an image file")
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code=1)


@contextmanager
def _client(url: str, api_key: str | None) -> Iterator[Client]:
    """A client whose errors become one stderr line and exit code 1."""
    try:
        client = Client(url, api_key=api_key)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--url") from None
    try:
        with client:
            yield client
    except CnnServeError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}")


def _print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2))


def classify(
    images: Annotated[
        list[Path],
        typer.Argument(exists=True, dir_okay=False, readable=True, help="image files"),
    ],
    model: Model,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="classes per image")] = 5,
    version: Version = None,
    raw_probabilities: Annotated[
        bool,
        typer.Option("--raw-probabilities", help="the raw softmax, not temperature-calibrated"),
    ] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Classify images and print the most probable classes of each.

    Images the server judges out of distribution are marked in the table ("ood" in --json).
    """
    with _client(url, api_key) as client:
        results = client.classify_many(
            images, model=model, top_k=top_k, version=version, calibrated=not raw_probabilities
        )
    if as_json:
        _print_json(_render.classifications_json(results))
    else:
        Console().print(_render.classifications_table(results))


def feature_maps(
    image: ImageFile,
    model: Model,
    layer: Annotated[list[str], typer.Option("--layer", "-l", help="layer name; repeatable")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", dir_okay=False, help="write one layer's channel grid PNG"),
    ] = None,
    version: Version = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Save a layer's activations as a PNG grid (--out), or summarise layers' activations."""
    if out is not None and len(layer) != 1:
        raise typer.BadParameter("--out takes exactly one --layer", param_hint="--layer")
    with _client(url, api_key) as client:
        if out is not None:
            png = client.feature_map_png(image, model=model, layer=layer[0], version=version)
        else:
            maps = client.feature_maps(image, model=model, layers=layer, version=version)
    if out is not None:
        _write(out, png)
    elif as_json:
        _print_json(_render.feature_maps_json(maps))
    else:
        Console().print(_render.feature_maps_table(maps))


def _write(out: Path, content: bytes) -> None:
    try:
        out.write_bytes(content)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}")
    typer.echo(str(out))


def explain(
    image: ImageFile,
    model: Model,
    method: Annotated[
        str, typer.Option("--method", help="occlusion (every model) or cam (see 'models')")
    ] = "occlusion",
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="class index or label; default the top class"),
    ] = None,
    window: Annotated[
        int | None, typer.Option("--window", help="occlusion window, model-input pixels")
    ] = None,
    stride: Annotated[
        int | None, typer.Option("--stride", help="occlusion stride, model-input pixels")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", dir_okay=False, help="write the heatmap overlay PNG"),
    ] = None,
    version: Version = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Explain a prediction: save the heatmap over the image (--out), or summarise it."""
    with _client(url, api_key) as client:
        if out is not None:
            png = client.explanation_png(
                image, model=model, method=method, target=target, window=window,
                stride=stride, version=version,
            )  # fmt: skip
        else:
            explanation = client.explain(
                image, model=model, method=method, target=target, window=window,
                stride=stride, version=version,
            )  # fmt: skip
    if out is not None:
        _write(out, png)
    elif as_json:
        _print_json(_render.explanation_json(explanation))
    else:
        Console().print(_render.explanation_table(explanation, image.name))


def models(url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """List the models the server serves."""
    with _client(url, api_key) as client:
        infos = client.models()
    if as_json:
        _print_json(_render.models_json(infos))
    else:
        Console().print(_render.models_table(infos))


def health(url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Say whether the server is live and ready; exit 1 unless it is ready."""
    with _client(url, api_key) as client:
        live = client.live()
        ready = client.ready()
    if as_json:
        _print_json({"url": url, "live": live, "ready": ready})
    else:
        yes_no = {True: "yes", False: "no"}
        typer.echo(f"{url}: live {yes_no[live]}, ready {yes_no[ready]}")
    if not ready:
        raise typer.Exit(code=1)


def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log retries")] = False,
) -> None:
    """Train, export, serve and call convolutional networks."""
    if verbose:
        logger.setLevel(logging.INFO)


def build_app() -> typer.Typer:
    """The root app: the client's commands, then those of installed sibling packages."""
    app = typer.Typer(
        name="cnnserve",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    app.command("classify")(classify)
    app.command("feature-maps")(feature_maps)
    app.command("explain")(explain)
    app.command("models")(models)
    app.command("health")(health)
    for module_name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a client-only install: no training, no serving
            logger.debug("no commands from %s: %s", module_name, exc)
            continue
        module.register(app)
    return app


def _configure_logging() -> None:
    # Only the client's logger: `cnnserve serve` configures the root logger its own way.
    for handler in list(logger.handlers):
        if handler.get_name() == "cnnserve-cli":
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("cnnserve-cli")
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script: run the command in ``argv`` (default ``sys.argv[1:]``) and exit."""
    _configure_logging()
    command = typer.main.get_command(build_app())
    args = list(argv) if argv is not None else None
    try:
        code = command.main(args=args, prog_name="cnnserve", standalone_mode=False)
    except _NoArgsIsHelpError as exc:
        ctx = getattr(exc, "ctx", None)
        typer.echo(ctx.get_help() if ctx is not None else str(exc))
        code = 2
    except _UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {_one_line(exc)}{hint}", err=True)
        code = 2
    except _ClickException as exc:
        typer.echo(f"error: {_one_line(exc)}", err=True)
        code = getattr(exc, "exit_code", 1)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 130
    except Exception as exc:
        if os.environ.get("CNNSERVE_DEBUG"):
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {_one_line(exc)}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(exc: Exception) -> str:
    format_message = getattr(exc, "format_message", None)
    text = format_message() if callable(format_message) else str(exc)
    return " ".join(str(text).split())
