"""The `cnnserve serve` command. Imports only typer here; the server loads on use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def serve(
    host: Annotated[str | None, typer.Option(help="default: CNNSERVE_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: CNNSERVE_PORT or 8000")] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="default: CNNSERVE_MODEL_DIR or models")
    ] = None,
    providers: Annotated[str | None, typer.Option(help="auto, cuda or cpu")] = None,
    workers: Annotated[int | None, typer.Option(help="server processes")] = None,
) -> None:
    """Serve the model repository over HTTP (settings from CNNSERVE_* variables; flags win)."""
    try:
        from pydantic import ValidationError

        from service.config import Settings
        from service.server import serve as run_server
    except ImportError as exc:
        typer.echo(
            f"error: serving needs the serve extra: pip install 'cnnserve[serve,cpu]' ({exc})",
            err=True,
        )
        raise typer.Exit(1) from None
    overrides = {
        "host": host,
        "port": port,
        "model_dir": model_dir,
        "providers": providers,
        "workers": workers,
    }
    try:
        settings = Settings.model_validate({k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"error: invalid settings: {problems}", err=True)
        raise typer.Exit(2) from None
    run_server(settings)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
