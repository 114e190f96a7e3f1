"""``thinghub account|product|device|topic``: the registry operations of the Alibaba API, for
people who would rather not write code. Each command opens the registry in the data directory
(SQLite in WAL mode, so it works beside a running hub), or the cluster's PostgreSQL registry
with ``--registry URL`` (``THINGHUB_REGISTRY_URL``), prints a table, or JSON with --json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from .auth.aliyun_device import build_credentials
from .progress import Progress
from .registry.accounts import ROOT_ACCOUNT_ID
from .registry.bulk import (
    DEFAULT_BATCH_SIZE,
    DeviceRow,
    ImportResult,
    register_devices,
    withdraw,
)
from .registry.device_csv import DEFAULT_MAX_ROWS, SecretsFile, read_devices, write_secrets
from .registry.errors import RegistryError, StoreUnavailable
from .registry.registry import Registry
from .registry.store import RegistryStore

F = TypeVar("F", bound=Callable[..., Any])


_REGISTRY_URL = "thinghub.registry_url"


def _remember_registry(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta[_REGISTRY_URL] = value or None


def _data_dir_option(func: F) -> F:
    func = click.option(
        "--registry",
        metavar="POSTGRES_URL",
        default=None,
        envvar="THINGHUB_REGISTRY_URL",
        expose_value=False,
        callback=_remember_registry,
        help="The cluster's PostgreSQL registry (what `serve --registry` takes), instead of "
        "registry.db in the data directory.",
    )(func)
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=Path("./data"),
        envvar="THINGHUB_DATA_DIR",
        show_default=True,
        help="The hub's data directory.",
    )(func)


def _open_store(data_dir: Path) -> RegistryStore:
    """``registry.db`` in the data directory, or the PostgreSQL registry of ``--registry``
    (read through a private in-memory copy: the data directory may be a running node's)."""
    context = click.get_current_context(silent=True)
    url = None if context is None else context.meta.get(_REGISTRY_URL)
    if not url:
        return RegistryStore.open(data_dir)
    from .registry.pg_store import PgRegistryStore  # only then is the driver loaded

    try:
        return PgRegistryStore(url, ":memory:", node="command-line")
    except StoreUnavailable as error:
        raise click.ClickException(str(error)) from None


def _common(func: F) -> F:
    func = _data_dir_option(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        func
    )
    return func


def _account_option(func: F) -> F:
    return click.option(
        "--account",
        default=ROOT_ACCOUNT_ID,
        show_default=True,
        help="The account the resources belong to.",
    )(func)


@contextmanager
def _registry(data_dir: Path) -> Iterator[Registry]:
    store = _open_store(data_dir)
    try:
        registry = Registry(store)
        registry.ensure_root_account()
        yield registry
    except RegistryError as error:
        raise click.ClickException(str(error)) from None
    finally:
        store.close()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _show(rows: Sequence[Any], columns: Sequence[str], as_json: bool) -> None:
    """Print dataclass rows as a table of ``columns``, or all their fields as JSON."""
    if as_json:
        click.echo(json.dumps([_plain(r) for r in rows], indent=2, ensure_ascii=False))
        return
    cells = [[_cell(getattr(r, c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    click.echo(header.rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        click.echo("(none)")


def _cell(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.name)
    return "" if value is None else str(value)


# ------------------------------------------------------------------------------ accounts


@click.group()
def account() -> None:
    """Accounts and their access keys."""


@account.command("list")
@_common
def account_list(data_dir: Path, as_json: bool) -> None:
    with _registry(data_dir) as registry:
        _show(registry.list_accounts(), ["account_id", "name", "created_at"], as_json)


@account.command("create")
@click.argument("name")
@_common
def account_create(name: str, data_dir: Path, as_json: bool) -> None:
    """Create an account and its first access key."""
    with _registry(data_dir) as registry:
        created = registry.create_account(name)
        key = registry.create_access_key(created.account_id)
        _show([key], ["account_id", "access_key_id", "secret"], as_json)


@account.command("keys")
@_account_option
@_common
def account_keys(account: str, data_dir: Path, as_json: bool) -> None:
    """List an account's access keys."""
    with _registry(data_dir) as registry:
        keys = registry.list_access_keys(account)
        _show(keys, ["access_key_id", "enabled", "description", "created_at"], as_json)


@account.command("create-key")
@_account_option
@click.option("--description", default="")
@_common
def account_create_key(account: str, description: str, data_dir: Path, as_json: bool) -> None:
    with _registry(data_dir) as registry:
        key = registry.create_access_key(account, description=description)
        _show([key], ["account_id", "access_key_id", "secret"], as_json)


@account.command("disable-key")
@click.argument("access_key_id")
@_common
def account_disable_key(access_key_id: str, data_dir: Path, as_json: bool) -> None:
    with _registry(data_dir) as registry:
        _show([registry.disable_access_key(access_key_id)], ["access_key_id", "enabled"], as_json)


# ------------------------------------------------------------------------------ products

_PRODUCT_COLUMNS = ["product_key", "name", "node_type", "device_count", "description"]


@click.group()
def product() -> None:
    """Products."""


@product.command("list")
@_account_option
@_common
def product_list(account: str, data_dir: Path, as_json: bool) -> None:
    with _registry(data_dir) as registry:
        rows = _all_pages(lambda page: registry.list_products(account, page=page, page_size=50))
        _show(rows, _PRODUCT_COLUMNS, as_json)


@product.command("create")
@click.argument("name")
@click.option("--gateway", is_flag=True, help="A gateway product (NodeType 1).")
@click.option("--description", default=None)
@_account_option
@_common
def product_create(
    name: str, gateway: bool, description: str | None, account: str, data_dir: Path, as_json: bool
) -> None:
    with _registry(data_dir) as registry:
        created = registry.create_product(
            account, name, 1 if gateway else 0, description=description
        )
        _show([created], [*_PRODUCT_COLUMNS, "product_secret"], as_json)


@product.command("show")
@click.argument("product_key")
@_account_option
@_common
def product_show(product_key: str, account: str, data_dir: Path, as_json: bool) -> None:
    with _registry(data_dir) as registry:
        found = registry.query_product(account, product_key)
        _show([found], [*_PRODUCT_COLUMNS, "product_secret"], as_json)


@product.command("delete")
@click.argument("product_key")
@_account_option
@_common
def product_delete(product_key: str, account: str, data_dir: Path, as_json: bool) -> None:
    with _registry(data_dir) as registry:
        registry.delete_product(account, product_key)
        _done(f"deleted product {product_key}", as_json)


# ------------------------------------------------------------------------------ devices

_DEVICE_COLUMNS = ["device_name", "status", "iot_id", "nickname", "last_online_at"]


@click.group()
def device() -> None:
    """Devices, and how they sign in."""


@device.command("list")
@click.argument("product_key")
@_account_option
@_common
def device_list(product_key: str, account: str, data_dir: Path, as_json: bool) -> None:
    with _registry(data_dir) as registry:
        rows = _all_pages(
            lambda page: registry.list_devices(account, product_key, page=page, page_size=50)
        )
        _show(rows, _DEVICE_COLUMNS, as_json)


@device.command("register")
@click.argument("product_key")
@click.argument("device_name", required=False)
@click.option("--nickname", default=None)
@_account_option
@_common
def device_register(
    product_key: str,
    device_name: str | None,
    nickname: str | None,
    account: str,
    data_dir: Path,
    as_json: bool,
) -> None:
    """Register a device (a name is generated when none is given)."""
    with _registry(data_dir) as registry:
        created = registry.register_device(account, product_key, device_name, nickname=nickname)
        _show([created], ["device_name", "iot_id", "device_secret"], as_json)


@device.command("show")
@click.argument("product_key")
@click.argument("device_name")
@_account_option
@_common
def device_show(
    product_key: str, device_name: str, account: str, data_dir: Path, as_json: bool
) -> None:
    """A device with its secret and the MQTT sign-in strings it can use."""
    with _registry(data_dir) as registry:
        found = registry.get_device(account, product_key=product_key, device_name=device_name)
    client_id, username, password = build_credentials(
        found.product_key, found.device_name, found.device_secret
    )
    if as_json:
        body = {**_plain(found), "mqtt": {"client_id": client_id, "username": username,
                                          "password": password}}  # fmt: skip
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    _show([found], [*_DEVICE_COLUMNS, "device_secret"], False)
    click.echo(
        f"\nMQTT client id: {client_id}\nMQTT user name: {username}\nMQTT password: {password}"
    )


@device.command("delete")
@click.argument("product_key")
@click.argument("device_name")
@_account_option
@_common
def device_delete(
    product_key: str, device_name: str, account: str, data_dir: Path, as_json: bool
) -> None:
    """Delete the device; a running hub closes its connection and ends its session within
    about a second (auth/device_watch.py)."""
    with _registry(data_dir) as registry:
        registry.delete_device(account, product_key=product_key, device_name=device_name)
        _done(f"deleted device {product_key}/{device_name}", as_json)


@device.command("disable")
@click.argument("product_key")
@click.argument("device_name")
@_account_option
@_common
def device_disable(
    product_key: str, device_name: str, account: str, data_dir: Path, as_json: bool
) -> None:
    """Refuse the device's sign-ins; a running hub closes its connection within about a
    second and keeps its session (auth/device_watch.py)."""
    with _registry(data_dir) as registry:
        registry.disable_device(account, product_key=product_key, device_name=device_name)
        _done(f"disabled device {product_key}/{device_name}", as_json)


@device.command("enable")
@click.argument("product_key")
@click.argument("device_name")
@_account_option
@_common
def device_enable(
    product_key: str, device_name: str, account: str, data_dir: Path, as_json: bool
) -> None:
    with _registry(data_dir) as registry:
        registry.enable_device(account, product_key=product_key, device_name=device_name)
        _done(f"enabled device {product_key}/{device_name}", as_json)


@device.command("import")
@click.argument(
    "csv_file", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--product-key",
    default=None,
    help="The product of every device; the file then needs no ProductKey column.",
)
@click.option(
    "--secrets-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write ProductKey,DeviceName,DeviceSecret,IotId to this file (mode 0600) instead of "
    "to standard output.",
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Leave out devices already registered instead of refusing the file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Devices per write transaction.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(1),
    default=DEFAULT_MAX_ROWS,
    show_default=True,
    help="The most devices one file may hold (all are checked in memory first).",
)
@_account_option
@_data_dir_option
def device_import(
    csv_file: Path,
    product_key: str | None,
    secrets_out: Path | None,
    skip_existing: bool,
    batch_size: int,
    max_rows: int,
    account: str,
    data_dir: Path,
) -> None:
    """Register the devices of a CSV file (columns ProductKey, DeviceName, optional Nickname
    and DeviceSecret; a header row is required), all or none of them, beside a running hub or
    not, and print their secrets as CSV."""
    # registry/bulk.py says how (batches, undo), registry/device_csv.py what the files hold.
    started = time.monotonic()
    rows = _read_device_rows(csv_file, product_key, max_rows)
    # Opened before anything is registered: a path that cannot be written fails first.
    try:
        out = SecretsFile(secrets_out) if secrets_out is not None else None
    except OSError as error:
        raise click.ClickException(f"cannot write {secrets_out}: {error.strerror}") from None
    with contextlib.ExitStack() as stack:
        if out is not None:
            stack.enter_context(out)
        registry = stack.enter_context(_registry(data_dir))
        try:
            with Progress("registering") as bar:
                result = register_devices(
                    registry,
                    account,
                    rows,
                    skip_existing=skip_existing,
                    batch_size=batch_size,
                    on_batch=bar.update,
                )
        except (StoreUnavailable, sqlite3.Error) as error:
            raise click.ClickException(f"{error}; nothing was registered") from None
        try:
            if out is None:
                write_secrets(sys.stdout, result.registered)
                sys.stdout.flush()
            else:
                write_secrets(out.stream, result.registered)
                out.commit()
        except OSError as error:
            # All or nothing: devices whose secrets nobody received are of no use.
            withdraw(registry, result)
            where = "standard output" if secrets_out is None else str(secrets_out)
            raise click.ClickException(
                f"cannot write the secrets to {where} ({error.strerror}); nothing was registered"
            ) from None
    click.echo(_import_summary(result, time.monotonic() - started, secrets_out), err=True)


def _read_device_rows(csv_file: Path, product_key: str | None, max_rows: int) -> list[DeviceRow]:
    try:
        # utf-8-sig: a byte order mark, as spreadsheets write, is not part of the header.
        with csv_file.open(encoding="utf-8-sig", newline="") as stream:
            return read_devices(stream, product_key=product_key, max_rows=max_rows)
    except UnicodeDecodeError as error:
        raise click.ClickException(
            f"{csv_file} is not UTF-8 text (byte {error.start}); nothing was registered"
        ) from None
    except OSError as error:
        raise click.ClickException(f"cannot read {csv_file}: {error.strerror}") from None
    except RegistryError as error:
        raise click.ClickException(str(error)) from None


def _import_summary(result: ImportResult, seconds: float, secrets_out: Path | None) -> str:
    registered = len(result.registered)
    text = f"registered {registered:,} device{'' if registered == 1 else 's'}"
    if result.apply_ids:
        ids = ", ".join(str(i) for i in sorted(result.apply_ids.values()))
        text += f" (ApplyId {ids})"
    text += f" in {seconds:.1f} s"
    if result.skipped:
        text += f"; skipped {len(result.skipped):,} already registered"
    where = "standard output" if secrets_out is None else str(secrets_out)
    return text + f"; secrets written to {where}"


# ------------------------------------------------------------------------------ topics


@click.group()
def topic() -> None:
    """Topic categories of a product (who may publish or subscribe where)."""


@topic.command("list")
@click.argument("product_key")
@_account_option
@_common
def topic_list(product_key: str, account: str, data_dir: Path, as_json: bool) -> None:
    with _registry(data_dir) as registry:
        rows = registry.list_topic_categories(account, product_key)
        _show(rows, ["id", "template", "operation", "description"], as_json)


@topic.command("create")
@click.argument("product_key")
@click.argument("short_name")
@click.option(
    "--operation",
    type=click.Choice(["SUB", "PUB", "ALL"], case_sensitive=False),
    required=True,
    help="What devices may do on it.",
)
@click.option("--description", default=None)
@_account_option
@_common
def topic_create(
    product_key: str,
    short_name: str,
    operation: str,
    description: str | None,
    account: str,
    data_dir: Path,
    as_json: bool,
) -> None:
    """Add /${productKey}/${deviceName}/user/SHORT_NAME to the product."""
    with _registry(data_dir) as registry:
        created = registry.create_topic_category(
            account, product_key, short_name, operation.upper(), description=description
        )
        _show([created], ["id", "template", "operation"], as_json)


@topic.command("delete")
@click.argument("topic_id", type=int)
@_account_option
@_common
def topic_delete(topic_id: int, account: str, data_dir: Path, as_json: bool) -> None:
    with _registry(data_dir) as registry:
        registry.delete_topic_category(account, topic_id)
        _done(f"deleted topic category {topic_id}", as_json)


# ------------------------------------------------------------------------------ helpers

T = TypeVar("T")


def _all_pages(fetch: Callable[[int], Any]) -> list[Any]:
    rows: list[Any] = []
    page = 1
    while True:
        result = fetch(page)
        rows.extend(result.items)
        if page >= result.page_count:
            return rows
        page += 1


def _done(text: str, as_json: bool) -> None:
    click.echo(json.dumps({"ok": True, "message": text}) if as_json else text)


COMMANDS = (account, product, device, topic)
