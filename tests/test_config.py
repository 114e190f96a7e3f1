"""Settings: defaults < TOML file < THINGHUB_* environment < command-line flags, and clear
errors for settings that cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinghub.config import ConfigError, load_settings


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings(environ={})
    assert (s.mqtt.port, s.http.port, s.data_dir) == (1883, 8080, Path("./data"))
    assert s.mqtt.max_packet_size == 256 * 1024
    assert s.mqtt.max_qos == 2
    assert s.mqtt.allow_anonymous is False


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        'data_dir = "/srv/hub"\n[mqtt]\nport = 1000\nmax_qos = 1\n'
        'deny_publish = ["a/#", "b"]\n[http]\nport = 9000\n'
    )
    s = load_settings(config, environ={"THINGHUB_MQTT_PORT": "2000", "THINGHUB_HTTP_PORT": "9100"})
    assert s.mqtt.port == 2000  # the environment beats the file
    assert s.http.port == 9100
    assert s.mqtt.max_qos == 1  # the file beats the default
    assert s.mqtt.deny_publish == ("a/#", "b")
    assert s.data_dir == Path("/srv/hub")
    s = load_settings(config, environ={"THINGHUB_MQTT_PORT": "2000"}, overrides={"mqtt.port": 3000})
    assert s.mqtt.port == 3000  # a flag beats both


def test_environment_types() -> None:
    s = load_settings(
        environ={
            "THINGHUB_MQTT_ALLOW_ANONYMOUS": "true",
            "THINGHUB_MQTT_DENY_SUBSCRIBE": "x/+, y/#",
            "THINGHUB_MQTT_SERVER_KEEP_ALIVE": "30",
            "THINGHUB_DATA_DIR": "/tmp/d",
            "THINGHUB_ROOT_ACCESS_KEY_ID": "not a setting, read by the hub itself",
        }
    )
    assert s.mqtt.allow_anonymous is True
    assert s.mqtt.deny_subscribe == ("x/+", "y/#")
    assert s.mqtt.server_keep_alive == 30
    assert s.data_dir == Path("/tmp/d")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"THINGHUB_MQTT_MAX_QOS": "3"}, "mqtt.max_qos"),
        ({"THINGHUB_MQTT_PORT": "eighty"}, "expected a number"),
        ({"THINGHUB_MQTT_ALLOW_ANONYMOUS": "perhaps"}, "expected true or false"),
        ({"THINGHUB_MQTT_NO_SUCH_THING": "1"}, "unknown setting"),
        ({"THINGHUB_MQTT_RECEIVE_MAXIMUM": "0"}, "receive_maximum"),
        ({"THINGHUB_API_ALIYUN_RATE_LIMITS": "Pub"}, "Action=requests_per_second"),
    ],
)
def test_bad_settings_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_bad_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("[mqtt\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml", environ={})
