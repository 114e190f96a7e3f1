"""Device lists as CSV for ``thinghub device import``: the rows read in, the secrets written
out.

In: a header row naming the columns is required (``DeviceName``; ``ProductKey`` unless one
product is given for the whole file; optional ``Nickname`` and ``DeviceSecret``), in any order
and letter case; a UTF-8 byte order mark (spreadsheets write one) is ignored, values are
stripped of surrounding spaces, blank lines are skipped. An empty ``DeviceSecret`` gets a new
one. Errors name the line (of the file, counted as an editor counts them) and are collected
as for the values (``bulk.ImportRefused``), so one run shows what to fix; the values
themselves are checked by ``bulk.register_devices``.

Out: ``ProductKey,DeviceName,DeviceSecret,IotId`` (the secrets and IotIds of the devices
registered, in the order read). ``SecretsFile`` writes them to a file only its owner can read
(mode 0600, created so from the start, never wider for a moment) and puts it in place by
renaming once complete, so an interrupted import never leaves half a list under the name.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from . import errors as e
from .bulk import DeviceRow, ImportedDevice, ImportRefused, Problems, RowProblem

if TYPE_CHECKING:
    from _csv import Reader

__all__ = ["COLUMNS", "DEFAULT_MAX_ROWS", "SECRET_COLUMNS", "SecretsFile", "read_devices",
           "write_secrets"]  # fmt: skip

COLUMNS = ("ProductKey", "DeviceName", "Nickname", "DeviceSecret")
SECRET_COLUMNS = ("ProductKey", "DeviceName", "DeviceSecret", "IotId")
# Rows of one import at most: they are all held in memory (a few hundred bytes each) to be
# checked before anything is written.
DEFAULT_MAX_ROWS = 1_000_000

_BY_LOWER = {name.lower(): name for name in COLUMNS}


def read_devices(
    stream: Iterable[str],
    *,
    product_key: str | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> list[DeviceRow]:
    """The rows of a device CSV (module notes). With ``product_key``, a ProductKey column
    may be left out or empty; a different ProductKey in it is an error. Raises
    ``ImportRefused``."""
    reader = csv.reader(stream, strict=True)
    problems = Problems()
    try:
        header = _header(reader, product_key)
        rows: list[DeviceRow] = []
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                problems.add(
                    line,
                    e.INVALID_PARAMETER,
                    f"{len(fields)} values, but the header names {len(header)} columns.",
                )
                continue
            if len(rows) >= max_rows:
                raise ImportRefused(
                    [RowProblem(line, e.DEVICE_COUNT_EXCEEDED,
                                f"More than {max_rows:,} devices in one import.")]
                )  # fmt: skip
            values = {column: value.strip() for column, value in zip(header, fields, strict=True)}
            key = values.get("ProductKey", "")
            if product_key is not None:
                if key and key != product_key:
                    problems.add(
                        line,
                        e.INVALID_PARAMETER,
                        f"ProductKey {key} is not {product_key}, the product of this import.",
                    )
                    continue
                key = product_key
            rows.append(
                DeviceRow(
                    line,
                    key,
                    values["DeviceName"],
                    values.get("Nickname", ""),
                    values.get("DeviceSecret") or None,
                )
            )
    except csv.Error as error:
        problems.add(reader.line_num, e.INVALID_PARAMETER, f"Not valid CSV: {error}.")
    problems.raise_any()
    return rows


def _header(reader: Reader, product_key: str | None) -> list[str]:
    for fields in reader:
        line_num = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        columns: list[str] = []
        for raw in fields:
            name = _BY_LOWER.get(raw.strip().lower())
            if name is None:
                raise _refused(
                    line_num,
                    f"The first row must name the columns ({', '.join(COLUMNS)}); "
                    f"{raw.strip()!r} is none of them.",
                )
            if name in columns:
                raise _refused(line_num, f"The column {name} is named twice.")
            columns.append(name)
        if "DeviceName" not in columns:
            raise _refused(line_num, "The header has no DeviceName column.")
        if "ProductKey" not in columns and product_key is None:
            raise _refused(
                line_num,
                "The header has no ProductKey column, and no product was given for the file.",
            )
        return columns
    raise _refused(
        max(reader.line_num, 1), "The file is empty: a header row naming the columns is required."
    )


def _refused(line: int, message: str) -> ImportRefused:
    return ImportRefused([RowProblem(line, e.INVALID_PARAMETER, message)])


def write_secrets(stream: TextIO, devices: Sequence[ImportedDevice]) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(SECRET_COLUMNS)
    writer.writerows((d.product_key, d.device_name, d.device_secret, d.iot_id) for d in devices)


class SecretsFile:
    """``with SecretsFile(path) as out: write_secrets(out.stream, ...); out.commit()``.

    Opened at once (a path that cannot be written fails before anything is registered), as
    a hidden file beside ``path`` with mode 0600; ``commit`` syncs it and renames it to
    ``path`` (replacing a file there); leaving the block without ``commit`` deletes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._partial = path.with_name(f".{path.name}.partial")
        self._partial.unlink(missing_ok=True)
        # O_EXCL: never write through a file (or link) someone else put there.
        fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self.stream: TextIO = open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except BaseException:
            os.close(fd)
            self._partial.unlink(missing_ok=True)
            raise
        self._committed = False

    def __enter__(self) -> SecretsFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if not self.stream.closed:
            self.stream.close()
        if not self._committed:
            self._partial.unlink(missing_ok=True)

    def commit(self) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self._partial, self.path)
        self._committed = True
