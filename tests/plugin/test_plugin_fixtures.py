"""The plugin's fixtures as a user's suite meets them, in pytest runs inside these tests
(pytester): which tests share a hub (scopes, the marker, the command line), what a reset
between tests clears and keeps, the SDK clients and their skip message, the plugin's silence
when its fixtures are unused, and a project's own fixture of the same name winning."""

from __future__ import annotations

import pytest
from pluginrun import REPORTING_CONFTEST, assert_nothing_left, preload, read_reports

pytest_plugins = ["pytester"]
preload()


@pytest.fixture
def report(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(REPORTING_CONFTEST)
    monkeypatch.setenv("HUB_REPORT", str(pytester.path / "hubs.jsonl"))
    return pytester


def hubs_by_test(pytester: pytest.Pytester) -> dict[str, int]:
    return {r["test"]: r["hub"] for r in read_reports(pytester.path / "hubs.jsonl")}


TWO_MODULES = {
    "test_one": """
def test_a(thinghub): pass
def test_b(thinghub): pass
""",
    "test_two": """
def test_c(thinghub): pass
""",
}


@pytest.mark.parametrize(
    ("args", "same"),
    [
        ((), [{"test_a", "test_b", "test_c"}]),
        (("--thinghub-scope=module",), [{"test_a", "test_b"}, {"test_c"}]),
        (("--thinghub-scope=function",), [{"test_a"}, {"test_b"}, {"test_c"}]),
    ],
    ids=["session", "module", "function"],
)
def test_the_scope_decides_which_tests_share_a_hub(
    report: pytest.Pytester, args: tuple[str, ...], same: list[set[str]]
) -> None:
    report.makepyfile(**TWO_MODULES)
    report.runpytest_inprocess(*args).assert_outcomes(passed=3)
    hubs = hubs_by_test(report)
    groups = [{test for test, hub in hubs.items() if hub == h} for h in set(hubs.values())]
    assert sorted(map(sorted, groups)) == sorted(map(sorted, same))
    assert_nothing_left(read_reports(report.path / "hubs.jsonl"))


def test_the_marker_sets_settings_and_scope_and_equal_settings_share(
    report: pytest.Pytester,
) -> None:
    report.makepyfile(
        test_marked="""
import pytest

def test_plain(thinghub):
    assert thinghub.settings.mqtt.max_qos == 2

@pytest.mark.thinghub(settings={"mqtt.max_qos": 1})
def test_dotted(thinghub):
    assert thinghub.settings.mqtt.max_qos == 1

@pytest.mark.thinghub(settings={"mqtt": {"max_qos": 1}})
def test_section(thinghub):
    assert thinghub.settings.mqtt.max_qos == 1

@pytest.mark.thinghub(scope="function", settings={"mqtt.max_qos": 1})
def test_own(thinghub):
    assert thinghub.settings.mqtt.max_qos == 1
"""
    )
    report.runpytest_inprocess().assert_outcomes(passed=4)
    hubs = hubs_by_test(report)
    assert hubs["test_dotted"] == hubs["test_section"]
    assert len({hubs["test_plain"], hubs["test_dotted"], hubs["test_own"]}) == 3


def test_a_marker_that_cannot_be_honoured_fails_the_test_saying_why(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_bad="""
import pytest

@pytest.mark.thinghub(settings={"mqtt.no_such_thing": 1})
def test_unknown_setting(thinghub): pass

@pytest.mark.thinghub(settings={"mqtt.max_qos": 7})
def test_bad_value(thinghub): pass

@pytest.mark.thinghub(scope="class")
def test_bad_scope(thinghub): pass

@pytest.mark.thinghub(sttings={})
def test_typo(thinghub): pass

@pytest.mark.thinghub(settings=["mqtt.max_qos", 1])
def test_not_a_dict(thinghub): pass
"""
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=5)
    result.stdout.no_fnmatch_line("*During handling of the above exception*")
    result.stdout.fnmatch_lines(
        [
            "*unknown setting option mqtt.no_such_thing*",
            "*mqtt.max_qos must be 0, 1 or 2*",
            "*thinghub scope must be one of session, module, function, not 'class'*",
            "*@pytest.mark.thinghub: unknown sttings*",
            "*@pytest.mark.thinghub: settings is a dict, not ?'mqtt.max_qos', 1?",
        ],
        consecutive=False,
    )


# A test leaves everything a test can leave on the shared hub; the next finds none of it.
LEAVES_AND_FINDS = """
import json
import pytest
from thinghub.testing.device import DeviceError

STATE = {}


def test_1_leaves_state_behind(thinghub, iot_device, aws_iot_data, aws_iot, aliyun_iot):
    STATE["hub"] = id(thinghub)
    device = iot_device(clean_start=False, session_expiry=600)
    device.subscribe(device.topic("get"))
    STATE["device"] = device
    STATE["pk"], STATE["dn"] = device.product_key, device.device_name
    STATE["loose"] = thinghub.device(product_key=device.product_key)  # not the fixture's
    aws_iot_data.publish(topic="status/door", retain=True, payload=b"open")
    aws_iot.create_thing(thingName="left-behind")
    aws_iot_data.update_thing_shadow(
        thingName="left-behind", payload=b'{"state":{"reported":{"a":1}}}'
    )
    thinghub.registry.create_account("a-tenant")
    STATE["message_id"] = pub(aliyun_iot, device)
    assert device.expect(device.topic("get")).payload == b"x"


def pub(aliyun_iot, device):
    import base64
    from aliyunsdkiot.request.v20180120.PubRequest import PubRequest
    request = PubRequest()
    request.set_ProductKey(device.product_key)
    request.set_TopicFullName(device.topic("get"))
    request.set_MessageContent(base64.b64encode(b"x").decode())
    request.set_Qos(1)
    return json.loads(aliyun_iot.do_action_with_exception(request))["MessageId"]


def test_2_finds_the_hub_as_it_started(thinghub, iot_device, aws_iot_data, aws_iot, aliyun_iot):
    assert id(thinghub) == STATE["hub"]
    loose = STATE["loose"]
    assert not loose.connected  # the reset closed its connection (MQTT 5: 0x98)
    assert loose.disconnect_reason.value == 0x98
    with pytest.raises(DeviceError, match="refused"):
        loose.connect()  # deleted with its product
    loose.close()
    assert thinghub.registry.lookup_device(STATE["pk"], STATE["dn"]) is None
    assert [a.account_id for a in thinghub.registry.list_accounts()] == ["root"]
    with pytest.raises(aws_iot_data.exceptions.ResourceNotFoundException):
        aws_iot_data.get_retained_message(topic="status/door")
    with pytest.raises(aws_iot_data.exceptions.ResourceNotFoundException):
        aws_iot_data.get_thing_shadow(thingName="left-behind")
    assert aws_iot.list_things()["things"] == []
    assert aws_iot.list_certificates()["certificates"] == []
    # MessageIds keep rising across the reset.
    assert pub(aliyun_iot, iot_device()) > STATE["message_id"]
"""


def test_a_reset_between_tests_leaves_the_next_one_a_hub_as_it_started(
    report: pytest.Pytester,
) -> None:
    report.makepyfile(test_reset=LEAVES_AND_FINDS)
    report.runpytest_inprocess().assert_outcomes(passed=2)
    assert_nothing_left(read_reports(report.path / "hubs.jsonl"))


def test_sessions_end_at_a_reset_and_reset_false_keeps_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_sessions="""
import pytest
from thinghub.testing.device import IotDevice, SignIn

pytestmark = pytest.mark.thinghub(settings={"mqtt.allow_anonymous": True})


def anonymous(thinghub, client_id):
    device = IotDevice(thinghub.mqtt_host, thinghub.mqtt_port, SignIn(client_id),
                       clean_start=False, session_expiry=600)
    device.connect()
    return device


@pytest.mark.thinghub(reset=False, settings={"mqtt.allow_anonymous": True})
def test_1_leaves_a_session(thinghub):
    device = anonymous(thinghub, "keeper")
    assert not device.session_present
    device.subscribe("news/#")
    device.close()


def test_2_finds_it_then_resets(thinghub):
    device = anonymous(thinghub, "keeper")
    assert device.session_present
    thinghub.aws_iot_data().publish(topic="news/today", qos=1, payload=b"kept")
    assert device.expect("news/#").payload == b"kept"  # the subscription survived
    device.close()


def test_3_finds_no_session(thinghub):
    device = anonymous(thinghub, "keeper")
    assert not device.session_present
    thinghub.aws_iot_data().publish(topic="news/today", qos=1, payload=b"gone")
    with pytest.raises(AssertionError, match="no message"):
        device.expect("news/#", timeout=0.5)  # no subscription any more
    device.close()
"""
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=3)


def test_the_client_fixtures_reach_the_hub_with_its_root_key(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_clients="""
from aliyunsdkiot.request.v20180120.QueryProductListRequest import QueryProductListRequest
from alibabacloud_iot20180120 import models
import json


def test_all(thinghub, aws_iot_data, aws_iot, aliyun_iot, alibabacloud_iot):
    aws_iot_data.publish(topic="a/b", qos=0, payload=b"x")
    assert aws_iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    request = QueryProductListRequest()
    request.set_CurrentPage(1)
    request.set_PageSize(10)
    assert json.loads(aliyun_iot.do_action_with_exception(request))["Success"] is True
    answer = alibabacloud_iot.query_product_list(
        models.QueryProductListRequest(current_page=1, page_size=10)
    )
    assert answer.body.success is True
    for client in (aws_iot_data, aws_iot):
        credentials = client._request_signer._credentials
        assert credentials.access_key == thinghub.access_key_id
"""
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


MISSING = {
    "aws_iot_data": ("boto3", "boto3", "the aws_iot_data and aws_iot fixtures"),
    "aws_iot": ("boto3", "boto3", "the aws_iot_data and aws_iot fixtures"),
    "aliyun_iot": ("aliyunsdkcore", "aliyun-python-sdk-core", "the aliyun_iot fixture"),
    "alibabacloud_iot": (
        "alibabacloud_iot20180120",
        "alibabacloud-iot20180120",
        "the alibabacloud_iot fixture",
    ),
    "iot_device": ("paho", "paho-mqtt", "the iot_device fixture"),
}


def test_a_client_whose_sdk_is_missing_skips_the_test_naming_the_package(
    pytester: pytest.Pytester,
) -> None:
    # A fresh process in which the SDKs cannot be imported, as on a machine without them.
    blocked = sorted({module for module, _package, _who in MISSING.values()})
    pytester.makeconftest(f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n")
    pytester.makepyfile(
        test_missing="".join(f"def test_{name}({name}): pass\n" for name in MISSING)
        + "import sys\ndef test_no_hub_started_for_them():\n"
        + "    assert 'thinghub.app' not in sys.modules\n"
    )
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=len(MISSING), passed=1)
    result.stdout.fnmatch_lines(
        [
            f"*{package} is not installed (pip install {package}): {who} need*"
            for _module, package, who in MISSING.values()
        ],
        consecutive=False,
    )


def test_the_plugin_starts_and_loads_nothing_while_its_fixtures_are_unused(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_quiet="""
import sys, threading

def test_nothing_of_thinghub_runs():
    assert "thinghub.testing.pytest_plugin" in sys.modules  # loaded from its entry point
    assert "thinghub.app" not in sys.modules
    assert not [t for t in threading.enumerate() if "thinghub" in t.name]
"""
    )
    result = pytester.runpytest_subprocess("--trace-config")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*thinghub*pytest_plugin*"])


def test_a_projects_own_fixture_of_the_same_name_wins(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import pytest

@pytest.fixture
def thinghub():
    return "the project's own"
"""
    )
    pytester.makepyfile(
        test_own="""
def test_own(thinghub):
    assert thinghub == "the project's own"
"""
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


def test_a_process_hub_serves_the_same_fixtures_and_resets(report: pytest.Pytester) -> None:
    report.makepyfile(test_reset=LEAVES_AND_FINDS)
    result = report.runpytest_subprocess("--thinghub-process")
    result.assert_outcomes(passed=2)
    (record, *_more) = read_reports(report.path / "hubs.jsonl")
    assert record["pid"] is not None  # a child process served them
    assert_nothing_left(read_reports(report.path / "hubs.jsonl"))


def test_the_ini_file_sets_the_defaults(report: pytest.Pytester) -> None:
    report.makeini("[pytest]\nthinghub_scope = function\nthinghub_process = false\n")
    report.makepyfile(**TWO_MODULES)
    report.runpytest_inprocess().assert_outcomes(passed=3)
    assert len(set(hubs_by_test(report).values())) == 3
