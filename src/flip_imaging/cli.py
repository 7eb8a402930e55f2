"""The ``flip-imaging`` command line."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from flip_imaging.config import Settings

app = typer.Typer(help="flip-imaging: XNAT-compatible imaging archive for FLIP trusts.",
                  no_args_is_help=True, add_completion=False)
console = Console()


def _settings(data_dir: Path | None, host: str | None = None, port: int | None = None) -> Settings:
    return Settings.load(data_dir=data_dir, host=host, port=port)


@app.command()
def serve(
    data_dir: Path = typer.Option(None, "--data-dir", help="Data directory (default ./flip-data)"),
    host: str = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)"),
    port: int = typer.Option(None, "--port", help="HTTP port (default 8080)"),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the archive: REST API, DICOM receivers and background workers, in one process."""
    import uvicorn

    from flip_imaging.app import create_app
    from flip_imaging.auth.bootstrap import ADMIN_USERNAME, ensure_admin
    from flip_imaging.context import create_context

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(data_dir, host, port)
    ctx = create_context(settings)
    boot = ensure_admin(ctx)
    if boot.created:
        how = (f"the password in {boot.password_file} (readable only by you)" if boot.password_file
               else "the password in FLIP_IMAGING_ADMIN_PASSWORD")
        console.print(f"Created site administrator [bold]{ADMIN_USERNAME}[/]: log in with {how}.")
    console.print(f"flip-imaging on {settings.effective_site_url} (data in {settings.data_dir})")
    uvicorn.run(create_app(ctx), host=settings.host, port=settings.port, log_level=log_level,
                timeout_graceful_shutdown=5)


@app.command()
def migrate(data_dir: Path = typer.Option(None, "--data-dir")) -> None:
    """Create or upgrade the database schema."""
    from flip_imaging.db import migrate as run

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run(settings.effective_database_url)
    console.print("database is up to date")


def _register_subpackage_commands() -> None:
    """Commands owned by sub-packages (imported here so ``--help`` lists them)."""
    from flip_imaging.demo import demo_command
    from flip_imaging.dicomedit.cli import anonymize_command

    app.command("anonymize")(anonymize_command)
    app.command("demo")(demo_command)


_register_subpackage_commands()


def main() -> None:
    app()
