"""``thinghub backup DEST``: copy the data directory's databases while the hub runs."""

from __future__ import annotations

from pathlib import Path

import click

from .config import ConfigError, load_settings
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
    also while the hub is running. Restore by starting a hub with --data-dir DESTINATION."""
    try:
        settings = load_settings(config_file, overrides={"data_dir": data_dir})
        written = backup_databases(settings.data_dir, destination)
    except (ConfigError, StoreError) as error:
        raise click.ClickException(str(error)) from None
    for path in written:
        click.echo(f"wrote {path}")
