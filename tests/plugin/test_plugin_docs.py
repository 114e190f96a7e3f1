"""The README's *Testing your code against ThingHub* runs as it is written: its Python
blocks, extracted here, are run by pytest (the test modules, all in one run, in a fresh
process as a user's run would be: the plugin loaded from its entry point) or by Python (the
scripts), against real hubs; and every hub the run started is gone at its end."""

from __future__ import annotations

import pytest
from pluginrun import REPORTING_CONFTEST, assert_nothing_left, doc_blocks, read_reports

pytest_plugins = ["pytester"]


def test_the_docs_have_the_three_examples_the_readme_promises() -> None:
    code = "\n".join(block.code for block in doc_blocks())
    assert "aws_iot_data.publish(" in code  # boto3 Publish reaching a device
    assert "PubRequest()" in code and "device.connect()" in code  # Pub to an offline device
    assert "shadow/update/delta" in code  # a shadow update reaching the delta topic


def test_the_test_modules_of_the_docs_pass(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = [block for block in doc_blocks() if block.is_test_module]
    assert len(blocks) >= 4
    pytester.makeconftest(REPORTING_CONFTEST)
    pytester.makepyfile(**{f"test_docs_block_{b.index}": b.code for b in blocks})
    monkeypatch.setenv("HUB_REPORT", str(pytester.path / "hubs.jsonl"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "-v")
    result.assert_outcomes(passed=sum(b.tests for b in blocks))
    assert_nothing_left(read_reports(pytester.path / "hubs.jsonl"))


@pytest.mark.parametrize(
    "index", [b.index for b in doc_blocks() if not b.is_test_module], ids=lambda i: f"block{i}"
)
def test_the_scripts_of_the_docs_run(pytester: pytest.Pytester, index: int) -> None:
    (block,) = [b for b in doc_blocks() if b.index == index]
    script = pytester.makepyfile(**{f"docs_script_{index}": block.code})
    result = pytester.runpython(script)
    assert result.ret == 0, result.stderr.str()
