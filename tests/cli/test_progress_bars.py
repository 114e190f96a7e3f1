"""Progress bars of ``thinghub device import`` and ``thinghub backup`` (thinghub/progress.py):
on a terminal a bar with count/total, rate and ETA, redrawn at most ~10 times a second and
never wider than the terminal; into a pipe nothing but the summary, not one control
character. The commands run as real child processes, their stderr a pseudo-terminal or a
pipe; the bar's own rules are checked on the class with a clock of the test's."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest

from thinghub.progress import MIN_INTERVAL_S, Progress, count, size
from thinghub.registry.store import RegistryStore
from thinghub.store.backup import backup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptyrun import COLUMNS, Run, frames, thinghub

pytestmark = pytest.mark.thinghub_only
DEVICES = 20_000


@pytest.fixture(scope="module")
def fleet_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV of DEVICES devices (no ProductKey column: given with --product-key)."""
    source = tmp_path_factory.mktemp("fleet") / "fleet.csv"
    source.write_text("DeviceName\n" + "".join(f"dev-{i:06d}\n" for i in range(DEVICES)))
    return source


def new_product(data_dir: Path, name: str) -> str:
    created = thinghub("product", "create", name, "--data-dir", str(data_dir), "--json",
                       tty=False)  # fmt: skip
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)[0]["product_key"])


def import_devices(data_dir: Path, product_key: str, source: Path, *, tty: bool) -> Run:
    # Batches of 50: 400 progress reports, far more than the bar may draw.
    run = thinghub(
        "device", "import", str(source), "--product-key", product_key, "--data-dir",
        str(data_dir), "--secrets-out", str(data_dir / f"{product_key}.csv"),
        "--batch-size", "50", tty=tty,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run


def test_import_shows_a_bar_on_a_terminal_and_nothing_in_a_pipe(
    fleet_csv: Path, tmp_path: Path
) -> None:
    on_terminal = import_devices(tmp_path, new_product(tmp_path, "Fleet_0001"), fleet_csv,
                                 tty=True)  # fmt: skip
    drawn = frames(on_terminal.stderr)
    assert drawn, on_terminal.stderr
    assert drawn[0].startswith("registering [") and f"0/{DEVICES:,}" in drawn[0]
    assert all("/s" in f for f in drawn)
    assert all("ETA" in f for f in drawn[1:-1])
    assert f"{DEVICES:,}/{DEVICES:,}" in drawn[-1] and " in 0:" in drawn[-1]
    assert all(len(f) < COLUMNS for f in drawn), drawn
    # At most ~10 a second over the whole run (the first and the last come free).
    seconds = on_terminal.seconds
    assert len(drawn) <= seconds / MIN_INTERVAL_S + 2, (len(drawn), seconds)
    summary = on_terminal.stderr.rstrip().splitlines()[-1]
    assert summary.startswith(f"registered {DEVICES:,} devices")

    in_pipe = import_devices(tmp_path, new_product(tmp_path, "Fleet_0002"), fleet_csv,
                             tty=False)  # fmt: skip
    # The summary line only, not one control character.
    assert len(in_pipe.stderr.splitlines()) == 1, in_pipe.stderr
    assert in_pipe.stderr.startswith(f"registered {DEVICES:,} devices (ApplyId ")
    assert "\r" not in in_pipe.stderr and "\x1b" not in in_pipe.stderr


def test_backup_shows_a_bar_on_a_terminal_and_nothing_in_a_pipe(
    fleet_csv: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    import_devices(data_dir, new_product(data_dir, "Fleet_0001"), fleet_csv, tty=False)

    on_terminal = thinghub("backup", str(tmp_path / "copy1"), "--data-dir", str(data_dir),
                           tty=True)  # fmt: skip
    assert on_terminal.returncode == 0, on_terminal.stderr
    drawn = frames(on_terminal.stderr)
    assert drawn and drawn[0].startswith("backing up [") and " MiB" in drawn[0]
    assert all(len(f) < COLUMNS for f in drawn), drawn
    # The last drawing: "backing up [###]  5.1 MiB/5.1 MiB  ... in 0:00", all of it copied.
    copied, total = drawn[-1].split("]  ")[1].split("  ")[0].split("/")
    assert copied == total and " in 0:" in drawn[-1], drawn[-1]
    assert "wrote" in on_terminal.stdout and "backed up 1 database" in on_terminal.stdout
    assert _devices(tmp_path / "copy1") == DEVICES

    in_pipe = thinghub("backup", str(tmp_path / "copy2"), "--data-dir", str(data_dir),
                       tty=False)  # fmt: skip
    assert in_pipe.returncode == 0, in_pipe.stderr
    assert in_pipe.stderr == ""
    assert "\r" not in in_pipe.stdout and "\x1b" not in in_pipe.stdout
    assert in_pipe.stdout.splitlines()[-1].startswith("backed up 1 database (")
    assert _devices(tmp_path / "copy2") == DEVICES


def _devices(data_dir: Path) -> int:
    db = sqlite3.connect(f"{(data_dir / 'registry.db').as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
    finally:
        db.close()


# --- store/backup.py's progress callback ----------------------------------------------------


def test_backup_reports_bytes_over_all_files_up_to_the_total(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = RegistryStore.open(data)
    with store.write() as conn:
        conn.execute("CREATE TABLE filler (blob BLOB)")
        conn.executemany("INSERT INTO filler VALUES (?)", [(b"\0" * 4000,)] * 3000)
    store.close()
    other = sqlite3.connect(data / "nonces.db")
    other.execute("CREATE TABLE t (x)")
    other.execute("INSERT INTO t VALUES (randomblob(100000))")
    other.commit()
    other.close()
    reports: list[tuple[int, int]] = []
    written = backup(data, tmp_path / "copy", progress=lambda d, t: reports.append((d, t)))
    assert [p.name for p in written] == ["registry.db", "nonces.db"]
    assert reports[0][0] == 0 and reports[0][1] > 12_000_000
    # ~12 MB copied 4 MiB a step: several reports, never past the total, ending on it.
    assert len(reports) >= 4
    assert all(0 <= d <= t for d, t in reports)
    assert reports[-1][0] == reports[-1][1] == sum(p.stat().st_size for p in written)


# --- the bar itself ---------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bar_is_redrawn_at_most_ten_times_a_second() -> None:
    stream, clock = FakeTerminal(), Clock()
    with Progress("work", total=10_000, stream=stream, clock=clock) as bar:
        for _ in range(10_000):  # 10,000 reports in 2 s
            bar.advance()
            clock.now += 0.0002
    drawn = frames(stream.getvalue())
    assert 20 <= len(drawn) <= 2 / MIN_INTERVAL_S + 2
    assert re.fullmatch(r"work \[#+\]  10,000/10,000  5,000/s  in 0:02\n", drawn[-1])
    assert stream.getvalue().endswith("\n")


def test_the_bar_shows_rate_and_eta_and_fits_the_width() -> None:
    bar = Progress("importing", total=1000, stream=FakeTerminal(), clock=Clock())
    bar.update(0)
    bar.update(250)
    bar._started = 90.0  # 250 in 10 s
    line = bar.line(100.0, final=False, width=80)
    assert re.fullmatch(r"importing \[(#+)(-+)\]  250/1,000  25/s  ETA 0:30", line), line
    filled, empty = re.findall(r"#+|-+", line.split("[")[1].split("]")[0])
    assert len(filled) == (len(filled) + len(empty)) // 4  # a quarter done
    narrow = bar.line(100.0, final=False, width=30)
    assert len(narrow) == 29 and "[" not in narrow
    sized = Progress("backing up", total=3 << 20, unit=size, stream=FakeTerminal(), clock=Clock())
    sized.update(1 << 20)
    assert "1.0 MiB/3.0 MiB" in sized.line(100.0, final=False, width=100)
    assert count(1234567) == "1,234,567" and size(512) == "512 B"


def test_no_terminal_no_output_and_an_error_erases_the_bar() -> None:
    piped = io.StringIO()
    with Progress("work", total=10, stream=piped) as bar:
        bar.update(5)
    assert piped.getvalue() == ""  # not a terminal: not a single character

    stream = FakeTerminal()
    with pytest.raises(KeyboardInterrupt), Progress("work", total=10, stream=stream) as bar:
        bar.update(5)
        raise KeyboardInterrupt
    assert stream.getvalue().endswith("\r\x1b[K")  # a clean line for what follows

    untouched = FakeTerminal()
    with pytest.raises(ValueError), Progress("work", total=10, stream=untouched):
        raise ValueError("before any progress")
    assert untouched.getvalue() == ""
