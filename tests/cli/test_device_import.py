"""``thinghub device import FILE.csv``: many devices from a CSV, all or none, beside a running
hub (thinghub/registry/bulk.py, thinghub/registry/device_csv.py).

What a user sees: 20,000 devices imported by the command line while ``thinghub serve`` runs on
the same data directory sign in at once with the secrets the import wrote out (0600), also one
that was refused just before; a bad row, a duplicate, a name already taken or an unknown
product is an error naming the line and registers nothing; ``--skip-existing`` leaves taken
names alone; a failure in a late batch or Ctrl-C mid-import leaves nothing behind either.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from thinghub.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
from ptyrun import Terminal, frames, thinghub
from sechub import Device, SecHub, wait_for

pytestmark = pytest.mark.thinghub_only


# --- helpers ------------------------------------------------------------------------------


def cli(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])


def cli_json(data_dir: Path, *args: str) -> Any:
    result = cli(data_dir, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def new_product(data_dir: Path, name: str = "Meters_01", *extra: str) -> str:
    return str(cli_json(data_dir, "product", "create", name, *extra)[0]["product_key"])


def device_count(data_dir: Path, product_key: str, *extra: str) -> int:
    return int(cli_json(data_dir, "product", "show", product_key, *extra)[0]["device_count"])


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def secrets_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def names(count: int, prefix: str = "dev") -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(count)]


def import_ok(data_dir: Path, *args: str) -> Result:
    result = cli(data_dir, "device", "import", *args)
    assert result.exit_code == 0, result.output
    return result


def refused(data_dir: Path, *args: str) -> str:
    """The error of a refused import (exit status 1)."""
    result = cli(data_dir, "device", "import", *args)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""  # no secrets of anything
    return result.stderr


# --- beside a running hub ------------------------------------------------------------------


def test_20000_devices_imported_beside_a_running_hub_sign_in_at_once(tmp_path: Path) -> None:
    hub = SecHub(tmp_path / "data")
    try:
        pk = hub.product("Fleet_0001")
        all_names = names(20_000)
        own_secret = "Imported-From-The-Cloud-0123456789"
        rows = [[pk, name, "", ""] for name in all_names]
        rows[123] = [pk, all_names[123], "Pump_123", own_secret]
        source = write_csv(
            tmp_path / "fleet.csv", ["ProductKey", "DeviceName", "Nickname", "DeviceSecret"], rows
        )
        # Refused before the import (no such device); the hub caches that answer.
        early = Device(hub, pk, all_names[7], "x" * 32)
        client, connack = early.sign_in(5, expect=None)
        client.close()
        assert connack.reason != 0

        out = tmp_path / "secrets.csv"
        run = thinghub(
            "device", "import", str(source), "--data-dir", str(hub.data_dir),
            "--secrets-out", str(out), tty=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "registered 20,000 devices" in run.stderr

        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        written = secrets_of(out.read_text())
        assert [r["DeviceName"] for r in written] == all_names  # in the file's order
        assert {r["ProductKey"] for r in written} == {pk}
        assert written[123]["DeviceSecret"] == own_secret
        assert len({r["IotId"] for r in written}) == 20_000
        assert len({r["DeviceSecret"] for r in written}) == 20_000
        # At once: no wait between the import's exit and these sign-ins.
        for index in (0, 123, 9_999, 19_999):
            row = written[index]
            device = Device(hub, pk, row["DeviceName"], row["DeviceSecret"])
            for version in (4, 5):
                client, _ = device.sign_in(version)  # asserts CONNACK success
                client.close()
        # A wrong secret is still refused.
        client, connack = Device(hub, pk, all_names[1], "y" * 32).sign_in(5, expect=None)
        client.close()
        assert connack.reason != 0

        # The device refused a moment ago: the hub notices the other process's write (its
        # device watch drops the cached refusal within half a second).
        late = Device(hub, pk, all_names[7], written[7]["DeviceSecret"])

        def signs_in() -> bool:
            client, connack = late.sign_in(5, expect=None)
            client.close()
            return bool(connack.reason == 0)

        wait_for(signs_in, timeout=5, what="the refused device to sign in after the import")
        assert hub.cli("product", "show", pk)[0]["device_count"] == 20_000
        hub.assert_alive()
    finally:
        assert hub.stop() == 0, hub.log()


def test_100000_devices_take_seconds(tmp_path: Path) -> None:
    """Batches, not a transaction (and an fsync) per device: 100,000 in seconds. The bound
    is loose for a busy shared machine; one fsync per device would take minutes."""
    pk = new_product(tmp_path)
    source = write_csv(tmp_path / "many.csv", ["DeviceName"], [[n] for n in names(100_000)])
    started = time.monotonic()
    run = thinghub(
        "device", "import", str(source), "--product-key", pk, "--data-dir", str(tmp_path),
        "--secrets-out", str(tmp_path / "s.csv"), tty=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert elapsed < 30, f"100,000 devices took {elapsed:.1f} s"
    assert device_count(tmp_path, pk) == 100_000


# --- output ------------------------------------------------------------------------------


def test_secrets_go_to_standard_output_by_default_and_the_summary_to_standard_error(
    tmp_path: Path,
) -> None:
    pk = new_product(tmp_path)
    rows = [["meter-1", "Hall_A"], ["meter-2", ""]]
    source = write_csv(tmp_path / "d.csv", ["DeviceName", "Nickname"], rows)
    result = import_ok(tmp_path, str(source), "--product-key", pk)
    written = secrets_of(result.stdout)
    assert [r["DeviceName"] for r in written] == ["meter-1", "meter-2"]
    assert list(written[0]) == ["ProductKey", "DeviceName", "DeviceSecret", "IotId"]
    assert all(len(r["DeviceSecret"]) == 32 and r["DeviceSecret"].isalnum() for r in written)
    assert "registered 2 devices" in result.stderr and "\x1b" not in result.stderr
    shown = cli_json(tmp_path, "device", "show", pk, "meter-1")
    assert shown["device_secret"] == written[0]["DeviceSecret"]
    assert shown["iot_id"] == written[0]["IotId"] and shown["nickname"] == "Hall_A"


def test_the_secrets_file_is_private_even_when_it_replaces_a_readable_one(
    tmp_path: Path,
) -> None:
    pk = new_product(tmp_path)
    out = tmp_path / "secrets.csv"
    out.write_text("old\n")
    out.chmod(0o644)
    old_umask = os.umask(0)
    try:
        source = write_csv(tmp_path / "d.csv", ["DeviceName"], [["meter-1"]])
        import_ok(tmp_path, str(source), "--product-key", pk, "--secrets-out", str(out))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [r["DeviceName"] for r in secrets_of(out.read_text())] == ["meter-1"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_secrets_file_that_cannot_be_written_fails_before_anything_is_registered(
    tmp_path: Path,
) -> None:
    pk = new_product(tmp_path)
    source = write_csv(tmp_path / "d.csv", ["DeviceName"], [["meter-1"]])
    error = refused(
        tmp_path, str(source), "--product-key", pk, "--secrets-out", str(tmp_path / "no/s.csv")
    )
    assert "cannot write" in error
    assert device_count(tmp_path, pk) == 0


# --- refusals: a clear error naming the line, nothing registered ----------------------------


# Rows of ProductKey, DeviceName, Nickname, DeviceSecret; "PK" is the product of the test,
# "OTHER" one of another account.
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([["PK", "ok-0001", "", ""], ["PK", "bad name", "", ""]],
                     ["line 3: iot.device.InvalidFormattedDeviceName"], id="bad-name"),
        pytest.param([["PK", "ok-0001", "", ""], ["PK", "ab", "", ""]],
                     ["line 3: iot.device.InvalidFormattedDeviceName"], id="short-name"),
        pytest.param([["PK", "ok-0001", "", ""], ["PK", "ok-0002", "", ""],
                      ["PK", "ok-0001", "", ""]],
                     ["line 4: iot.device.AlreadyExistedDeviceName", "also on line 2"],
                     id="duplicate-in-file"),
        pytest.param([["PK", "ok-0001", "", ""], ["PK", "taken-1", "", ""]],
                     ["line 3: iot.device.AlreadyExistedDeviceName", "taken-1 already exists"],
                     id="already-registered"),
        pytest.param([["PK", "ok-0001", "", ""], ["a1nope000000", "ok-0002", "", ""]],
                     ["line 3: iot.prod.NotExistedProduct", "a1nope000000"],
                     id="unknown-product"),
        pytest.param([["PK", "ok-0001", "", ""], ["OTHER", "ok-0002", "", ""]],
                     ["line 3: iot.prod.NotExistedProduct"], id="another-accounts-product"),
        pytest.param([["PK", "ok-0001", "", ""], ["", "ok-0002", "", ""]],
                     ["line 3: iot.prod.NullProductKey"], id="empty-product"),
        pytest.param([["PK", "ok-0001", "no", ""]],
                     ["line 2: iot.common.InvalidFormattedParameter", "Nickname"],
                     id="bad-nickname"),
        pytest.param([["PK", "ok-0001", "", "short"]],
                     ["line 2: iot.common.InvalidFormattedParameter", "DeviceSecret"],
                     id="bad-secret"),
        pytest.param([["PK", "ok-0001", ""]], ["line 2:", "3 values", "4 columns"],
                     id="missing-field"),
    ],
)  # fmt: skip
def test_a_bad_row_is_named_and_nothing_is_registered(
    tmp_path: Path, rows: list[list[str]], expected: list[str]
) -> None:
    pk = new_product(tmp_path)
    taken = write_csv(tmp_path / "t.csv", ["DeviceName"], [["taken-1"]])
    import_ok(tmp_path, str(taken), "--product-key", pk)
    other = cli_json(tmp_path, "account", "create", "tenant-b")[0]["account_id"]
    other_pk = new_product(tmp_path, "Theirs_01", "--account", other)
    keys = {"PK": pk, "OTHER": other_pk}
    filled = [[keys.get(r[0], r[0]), *r[1:]] for r in rows]
    header = ["ProductKey", "DeviceName", "Nickname", "DeviceSecret"]
    error = refused(tmp_path, str(write_csv(tmp_path / "bad.csv", header, filled)))
    assert "nothing was registered" in error
    for text in expected:
        assert text in error
    assert device_count(tmp_path, pk) == 1  # taken-1 only
    assert device_count(tmp_path, other_pk, "--account", other) == 0


def test_every_problem_of_the_file_is_counted_and_the_first_are_named(tmp_path: Path) -> None:
    pk = new_product(tmp_path)
    bad = [[f"bad name {i}"] for i in range(500)]  # a space is no DeviceName character
    error = refused(
        tmp_path, str(write_csv(tmp_path / "bad.csv", ["DeviceName"], bad)), "--product-key", pk
    )
    assert "500 problems" in error
    assert "line 2:" in error and "line 21:" in error and "line 22:" not in error
    assert "and 480 more" in error


@pytest.mark.parametrize(
    ("content", "args", "expected"),
    [
        pytest.param("", (), "line 1: iot.common.InvalidFormattedParameter: The file is empty",
                     id="empty-file"),
        pytest.param("meter-1\nmeter-2\n", ("--product-key", "PK"),
                     "line 1: iot.common.InvalidFormattedParameter: The first row must name",
                     id="no-header"),
        pytest.param("DeviceName,Colour\nmeter-1,red\n", ("--product-key", "PK"),
                     "'Colour' is none of them", id="unknown-column"),
        pytest.param("DeviceName,devicename\nmeter-1,meter-2\n", ("--product-key", "PK"),
                     "named twice", id="column-twice"),
        pytest.param("Nickname\nHall_A\n", ("--product-key", "PK"),
                     "no DeviceName column", id="no-name-column"),
        pytest.param("DeviceName\nmeter-1\n", (),
                     "no ProductKey column", id="no-product"),
        pytest.param("ProductKey,DeviceName\na1other0000,meter-1\n", ("--product-key", "PK"),
                     "line 2: iot.common.InvalidFormattedParameter: ProductKey a1other0000 is not",
                     id="other-product-than-given"),
        pytest.param('DeviceName\n"meter-1\n', ("--product-key", "PK"),
                     "Not valid CSV", id="unterminated-quote"),
    ],
)  # fmt: skip
def test_a_file_of_the_wrong_shape_is_refused(
    tmp_path: Path, content: str, args: tuple[str, ...], expected: str
) -> None:
    pk = new_product(tmp_path)
    source = tmp_path / "shape.csv"
    source.write_text(content)
    error = refused(tmp_path, str(source), *(pk if a == "PK" else a for a in args))
    assert expected in error, error
    assert device_count(tmp_path, pk) == 0


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    pk = new_product(tmp_path)
    source = tmp_path / "latin1.csv"
    source.write_bytes("DeviceName,Nickname\nmeter-1,Zürich\n".encode("latin-1"))
    assert "is not UTF-8 text" in refused(tmp_path, str(source), "--product-key", pk)
    assert device_count(tmp_path, pk) == 0


def test_header_names_are_matched_loosely_and_blank_lines_skipped(tmp_path: Path) -> None:
    pk = new_product(tmp_path)
    source = tmp_path / "loose.csv"
    # A spreadsheet's byte order mark, other letter case, spaces, CRLF and blank lines.
    source.write_bytes(
        f"\ufeff devicename , PRODUCTKEY\r\n meter-1 ,{pk}\r\n\r\nmeter-2,\r\n".encode()
    )
    result = import_ok(tmp_path, str(source), "--product-key", pk)
    assert [r["DeviceName"] for r in secrets_of(result.stdout)] == ["meter-1", "meter-2"]


def test_an_account_imports_into_its_own_products(tmp_path: Path) -> None:
    other = cli_json(tmp_path, "account", "create", "tenant-b")[0]["account_id"]
    theirs = new_product(tmp_path, "Theirs_01", "--account", other)
    source = write_csv(tmp_path / "d.csv", ["ProductKey", "DeviceName"], [[theirs, "meter-1"]])
    assert "iot.prod.NotExistedProduct" in refused(tmp_path, str(source))  # not root's
    result = import_ok(tmp_path, str(source), "--account", other)
    assert [r["DeviceName"] for r in secrets_of(result.stdout)] == ["meter-1"]
    assert device_count(tmp_path, theirs, "--account", other) == 1


# --- --skip-existing --------------------------------------------------------------------------


def test_skip_existing_leaves_registered_devices_alone(tmp_path: Path) -> None:
    pk = new_product(tmp_path)
    existing = write_csv(tmp_path / "a.csv", ["DeviceName"], [["meter-1"], ["meter-2"]])
    first = import_ok(tmp_path, str(existing), "--product-key", pk)
    before = {r["DeviceName"]: r for r in secrets_of(first.stdout)}
    source = write_csv(tmp_path / "b.csv", ["DeviceName"], [["meter-2"], ["meter-3"]])
    assert "meter-2 already exists" in refused(tmp_path, str(source), "--product-key", pk)
    result = import_ok(tmp_path, str(source), "--product-key", pk, "--skip-existing")
    assert [r["DeviceName"] for r in secrets_of(result.stdout)] == ["meter-3"]
    assert "skipped 1 already registered" in result.stderr
    kept = cli_json(tmp_path, "device", "show", pk, "meter-2")
    assert kept["device_secret"] == before["meter-2"]["DeviceSecret"]
    assert kept["iot_id"] == before["meter-2"]["IotId"]
    assert device_count(tmp_path, pk) == 3


# --- all or nothing, also after batches have committed ----------------------------------------


def test_a_failure_in_a_late_batch_removes_the_batches_before_it(tmp_path: Path) -> None:
    pk = new_product(tmp_path)
    import_ok(tmp_path, str(write_csv(tmp_path / "t.csv", ["DeviceName"], [["kept-1"]])),
              "--product-key", pk)  # fmt: skip
    # A real write failure inside the 8th batch of 100: SQLite refuses that row.
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute(
            "CREATE TRIGGER fail_late BEFORE INSERT ON devices WHEN NEW.device_name = 'dev-000750'"
            " BEGIN SELECT RAISE(ABORT, 'injected write failure'); END"
        )
    db.close()
    source = write_csv(tmp_path / "d.csv", ["DeviceName"], [[n] for n in names(1_000)])
    error = refused(tmp_path, str(source), "--product-key", pk, "--batch-size", "100")
    assert "injected write failure" in error and "nothing was registered" in error
    assert device_count(tmp_path, pk) == 1  # kept-1, registered before
    with sqlite3.connect(tmp_path / "registry.db") as db:
        applies = db.execute("SELECT COUNT(*) FROM device_applies").fetchone()[0]
    db.close()
    assert applies == 1  # the first import's; the failed one left none


def race(data_dir: Path) -> None:
    """Someone else registers dev-000700 while the import writes dev-000500 (a trigger: in
    the import's own transaction, so the timing is certain)."""
    with sqlite3.connect(data_dir / "registry.db") as db:
        db.execute(
            "CREATE TRIGGER race AFTER INSERT ON devices WHEN NEW.device_name = 'dev-000500' "
            "BEGIN INSERT INTO devices (iot_id, product_key, device_name, device_secret, "
            "created_at, status_changed_at) VALUES ('Racer000000000000000001aa', "
            "NEW.product_key, 'dev-000700', 'racer-secret', 0, 0); END"
        )
    db.close()


def test_a_name_taken_during_the_import_undoes_it(tmp_path: Path) -> None:
    pk = new_product(tmp_path)
    race(tmp_path)
    source = write_csv(tmp_path / "d.csv", ["DeviceName"], [[n] for n in names(1_000)])
    error = refused(tmp_path, str(source), "--product-key", pk, "--batch-size", "100")
    assert "line 702: DeviceName dev-000700 was registered" in error
    assert "by someone else during the import; nothing was registered" in error
    assert device_count(tmp_path, pk) == 1  # the other one's device stays
    assert cli_json(tmp_path, "device", "show", pk, "dev-000700")["device_secret"] == (
        "racer-secret"
    )


def test_skip_existing_also_skips_a_name_taken_during_the_import(tmp_path: Path) -> None:
    pk = new_product(tmp_path)
    race(tmp_path)
    source = write_csv(tmp_path / "d.csv", ["DeviceName"], [[n] for n in names(1_000)])
    result = import_ok(
        tmp_path, str(source), "--product-key", pk, "--batch-size", "100", "--skip-existing"
    )
    written = [r["DeviceName"] for r in secrets_of(result.stdout)]
    assert len(written) == 999 and "dev-000700" not in written
    assert "registered 999 devices" in result.stderr and "skipped 1" in result.stderr
    assert device_count(tmp_path, pk) == 1_000
    with sqlite3.connect(tmp_path / "registry.db") as db:
        counts = db.execute("SELECT count FROM device_applies").fetchall()
    db.close()
    assert counts == [(999,)]  # QueryBatchRegisterDeviceStatus tells what was registered


def test_ctrl_c_mid_import_removes_what_was_written(tmp_path: Path) -> None:
    pk = new_product(tmp_path)
    # One device per transaction: slow enough (an fsync each) to be interrupted midway.
    source = write_csv(tmp_path / "d.csv", ["DeviceName"], [[n] for n in names(5_000)])
    terminal = Terminal(
        "device", "import", str(source), "--product-key", pk, "--data-dir", str(tmp_path),
        "--batch-size", "1", "--secrets-out", str(tmp_path / "s.csv"),
    )  # fmt: skip
    try:
        terminal.wait_for("registering [")
        # Some batches are committed: the bar counts them.
        with terminal.changed:
            terminal.changed.wait_for(
                lambda: any(not f.split()[2].startswith("0/") for f in frames(terminal.text())),
                timeout=30,
            )
        terminal.proc.send_signal(signal.SIGINT)
        terminal.proc.communicate(timeout=60)
    finally:
        if terminal.proc.poll() is None:
            terminal.proc.kill()
            terminal.proc.wait()
    assert terminal.proc.returncode != 0
    assert "Aborted" in terminal.collected()
    assert device_count(tmp_path, pk) == 0
    assert not (tmp_path / "s.csv").exists()
