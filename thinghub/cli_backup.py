"""``thinghub backup DEST``: copy the data directory's databases while the hub runs, with a
progress bar on a terminal (progress.py)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .config import ConfigError, load_settings
from .progress import Progress, size
from .store.backup import backup as backup_databases
from .store.errors import StoreError


@click.command()
@click.argument("destination", type=click.Path(path_type=Path))
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The hub's data directory (default: from settings, ./data).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="A TOML settings file.",
)
def backup(destination: Path, data_dir: Path | None, config_file: Path | None) -> None:
    """Write a consistent copy of registry.db and broker.db into DESTINATION (a directory),
    also while the hub is running. Restore by starting a hub with --data-dir DESTINATION.
    On a terminal a progress bar is shown on standard error."""
    started = time.monotonic()
    try:
        settings = load_settings(config_file, overrides={"data_dir": data_dir})
        with Progress("backing up", unit=size) as bar:
            written = backup_databases(settings.data_dir, destination, progress=bar.update)
    except (ConfigError, StoreError) as error:
        raise click.ClickException(str(error)) from None
    for path in written:
        click.echo(f"wrote {path}")
    total = sum(path.stat().st_size for path in written)
    click.echo(
        f"backed up {len(written)} database{'' if len(written) == 1 else 's'} "
        f"({size(total)}) in {time.monotonic() - started:.1f} s"
    )
