"""``thinghub ca show``: the hub's CA certificate (``<data_dir>/ca/ca.pem``, made by the hub at
its first start), to give devices as the issuer of the certificates the AWS IoT API hands out.
It only reads: the CA is created by the hub, which holds the data directory's lock."""

from __future__ import annotations

from pathlib import Path

import click

from .identity.ca import CAError, HubCA


@click.group()
def ca() -> None:
    """The hub's certificate authority."""


@ca.command("show")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("./data"),
    envvar="THINGHUB_DATA_DIR",
    show_default=True,
    help="The hub's data directory.",
)
@click.option(
    "--fingerprint",
    is_flag=True,
    help="Print the certificate's SHA-256 fingerprint instead of its PEM.",
)
def ca_show(data_dir: Path, fingerprint: bool) -> None:
    """Print the CA certificate (PEM), or its SHA-256 fingerprint."""
    try:
        hub_ca = HubCA.load(data_dir)
    except CAError as error:
        raise click.ClickException(str(error)) from None
    if fingerprint:
        click.echo(f"SHA256 Fingerprint={hub_ca.fingerprint}")
    else:
        click.echo(hub_ca.pem, nl=False)
