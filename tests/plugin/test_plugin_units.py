"""Pure parts of thinghub/testing: how settings are read (options.py), and the registry
baseline and purge of a reset (baseline.py) on a real registry.db."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinghub.config import ConfigError
from thinghub.identity.ca import HubCA
from thinghub.identity.service import IdentityService
from thinghub.registry.accounts import ROOT_ACCOUNT_ID
from thinghub.registry.registry import Registry
from thinghub.registry.store import RegistryStore
from thinghub.testing.baseline import RegistryBaseline
from thinghub.testing.enrol import register_aliyun, register_aws
from thinghub.testing.options import TEST_DEFAULTS, HubOptions, flatten_settings


def test_settings_are_flattened_to_dotted_keys() -> None:
    assert flatten_settings(
        {"mqtt": {"max_qos": 1, "tls": False}, "log_level": "DEBUG", "http.port": 0}
    ) == {"mqtt.max_qos": 1, "mqtt.tls": False, "log_level": "DEBUG", "http.port": 0}
    with pytest.raises(ConfigError, match="a dotted setting takes a value, not a table"):
        flatten_settings({"mqtt.max_qos": {"x": 1}})


def test_options_resolve_over_the_test_defaults(tmp_path: Path) -> None:
    options = HubOptions.build({"mqtt": {"max_qos": 1}, "store.backend": "sqlite"})
    settings = options.resolve(tmp_path)
    assert settings.data_dir == tmp_path
    assert settings.mqtt.max_qos == 1
    assert settings.store.backend == "sqlite"  # the user's wins over TEST_DEFAULTS
    assert (settings.mqtt.port, settings.mqtt.tls_port, settings.http.port) == (0, 0, 0)
    assert TEST_DEFAULTS["store.backend"] == "memory"


def test_the_environment_does_not_configure_a_test_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THINGHUB_MQTT_MAX_QOS", "0")
    assert HubOptions.build().resolve(tmp_path).mqtt.max_qos == 2


def test_hubs_with_equal_settings_share_a_key_whatever_their_root_keys() -> None:
    a = HubOptions.build({"mqtt.max_qos": 1})
    b = HubOptions.build({"mqtt": {"max_qos": 1}})
    assert a.access_key_id != b.access_key_id
    assert a.key() == b.key()
    assert a.key() != HubOptions.build().key()


def test_a_purge_deletes_what_came_after_the_baseline_and_nothing_else(tmp_path: Path) -> None:
    store = RegistryStore.open(tmp_path)
    registry = Registry(store)
    root = registry.ensure_root_account()
    registry.ensure_root_key("AKIABASELINEKEY00001", "baseline-secret")
    kept = register_aliyun(registry, root.account_id, device_name="kept-device")
    store.set_meta("test-counter", 1)  # the hub's counters are never purged
    baseline = RegistryBaseline.capture(store)

    identity = IdentityService(store, HubCA.load_or_create(tmp_path))
    register_aws(identity, root.account_id, thing_name="lamp")
    register_aliyun(registry, root.account_id)  # a new product and device
    register_aliyun(registry, root.account_id, product_key=kept.product_key)
    tenant = registry.create_account("tenant")
    registry.create_access_key(tenant.account_id)
    registry.disable_access_key("AKIABASELINEKEY00001")  # a baseline row, changed
    store.set_meta("test-counter", 2)

    deleted = baseline.purge(store)

    assert deleted["devices"] == 2 and deleted["products"] == 1
    assert deleted["accounts"] == 1 and deleted["access_keys"] == 1
    assert deleted["iot_things"] == 1 and deleted["iot_certificates"] == 1
    assert "meta" not in deleted
    assert RegistryBaseline.capture(store) == baseline
    assert [a.account_id for a in registry.list_accounts()] == [ROOT_ACCOUNT_ID]
    assert registry.lookup_device(kept.product_key, "kept-device") is not None
    key = registry.lookup_access_key("AKIABASELINEKEY00001")
    assert key is not None and not key.enabled  # kept as it is now
    assert store.get_meta("test-counter") == 2
    assert baseline.purge(store) == {}  # nothing more to delete
    store.close()
