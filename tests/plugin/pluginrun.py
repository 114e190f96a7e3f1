"""Helpers of the plugin's tests: the Python code blocks of README *Testing*, and what a pytest
run inside a test (pytester) reports back about the hubs it started, so that the outer test
can check that nothing of them is left."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# The README's section the plugin's tests run as written.
SECTION = "## Testing your code against ThingHub\n"
TIMEOUT = 20.0

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Block:
    index: int
    code: str

    @property
    def is_test_module(self) -> bool:
        return re.search(r"^def test_", self.code, re.MULTILINE) is not None

    @property
    def tests(self) -> int:
        return len(re.findall(r"^def test_", self.code, re.MULTILINE))


def doc_section(path: Path = README) -> str:
    """The README's *Testing your code against ThingHub*, up to the next section."""
    text = path.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else len(text)]


def doc_blocks(path: Path = README) -> list[Block]:
    return [Block(i, m.group(1)) for i, m in enumerate(_BLOCK.finditer(doc_section(path)))]


# A conftest for inner runs: every test that used the `thinghub` fixture writes down, before
# its fixtures are torn down, what the outer test then checks is gone (ports, data directory,
# child process). ``report(hub)`` does the same from inside a test.
REPORTING_CONFTEST = """
import json, os
import pytest

def report(hub, test="inline"):
    record = {
        "test": test,
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "ports": [hub.mqtt_port, hub.http_port] + ([hub.tls_port] if hub.tls_port else []),
        "data_dir": str(hub.data_dir),
        "pid": getattr(getattr(hub, "proc", None), "pid", None),
        "hub": str(hub.data_dir),  # unique per hub (an id() may be reused)
    }
    with open(os.environ["HUB_REPORT"], "a") as out:
        out.write(json.dumps(record) + "\\n")

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item):
    hub = getattr(item, "funcargs", {}).get("thinghub")
    if hub is not None:
        report(hub, item.name)
    return (yield)
"""


def read_reports(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def process_gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def wait_until(condition: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def assert_nothing_left(reports: list[dict[str, Any]]) -> None:
    """Every hub the inner run reported is gone: ports closed, data directory removed, child
    process exited."""
    assert reports, "the inner run reported no hub"
    for record in reports:
        for port in record["ports"]:
            assert port_closed(port), f"port {port} of {record['test']} still listens"
        assert not os.path.exists(record["data_dir"]), f"{record['data_dir']} was left"
        if record["pid"] is not None:
            wait_until(lambda pid=record["pid"]: process_gone(pid), f"hub process {record['pid']}")


def preload() -> None:
    """Import here, once, what an in-process pytester run imports: pytester gives each run a
    fresh ``sys.modules`` past what was loaded before it, and a second copy of an extension's
    Python side (cryptography's key classes) no longer matches the compiled one."""
    import alibabacloud_iot20180120.client  # noqa: F401
    import aliyunsdkcore.client  # noqa: F401
    import aliyunsdkiot.request.v20180120.PubRequest
    import aliyunsdkiot.request.v20180120.QueryProductListRequest  # noqa: F401
    import boto3
    import botocore.config  # noqa: F401

    import thinghub.testing.device
    import thinghub.testing.inloop
    import thinghub.testing.process
    import thinghub.testing.threaded  # noqa: F401

    for service in ("iot", "iot-data"):  # botocore loads service models at the first client
        boto3.client(service, region_name="us-east-1", aws_access_key_id="x",
                     aws_secret_access_key="y")  # fmt: skip
