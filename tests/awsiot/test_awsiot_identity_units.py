"""Pure parts of the control plane: the route table against botocore's ``iot`` model (the
contract boto3 holds the hub to), account numbers and ARNs, policy document validation, the
X.509 checks, the DescribeEndpoint host."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore
import pytest
import x509util

from thinghub.config import ConfigError, load_settings
from thinghub.http.aws_control.endpoint import request_host
from thinghub.http.aws_control.errors import _SHAPES
from thinghub.http.aws_control.routes import OPERATIONS, ROUTES, match
from thinghub.identity.arns import Arns, account_number, certificate_id_of
from thinghub.identity.ca import HubCA
from thinghub.identity.errors import IdentityError, Problem
from thinghub.identity.policies import check_document
from thinghub.identity.service import IdentityService
from thinghub.identity.x509 import check_validity, is_ca, issued_by, load_certificate
from thinghub.registry.registry import Registry
from thinghub.registry.store import FILE_NAME, MIGRATIONS, RegistryStore


def _model() -> dict[str, object]:
    path = Path(botocore.__file__).parent / "data" / "iot" / "2015-05-28" / "service-2.json.gz"
    if not path.exists():
        path = path.with_suffix("")
        return dict(json.loads(path.read_text()))
    return dict(json.loads(gzip.decompress(path.read_bytes())))


def test_every_route_is_the_models() -> None:
    """Each operation is served at the model's method and URI, and nothing else is."""
    operations = _model()["operations"]
    assert isinstance(operations, dict)
    served = {op: (method, template) for template, verbs in ROUTES for method, op in verbs.items()}
    assert set(served) == set(OPERATIONS)
    for operation, (method, template) in served.items():
        http = operations[operation]["http"]
        uri = http["requestUri"].partition("?")[0]
        parts = ["{}" if p.startswith("{") else p for p in uri.split("/")]
        assert (http["method"], "/".join(parts)) == (method, template), operation


def test_error_shapes_have_the_models_status() -> None:
    shapes = _model()["shapes"]
    assert isinstance(shapes, dict)
    for shape in _SHAPES.values():
        assert shapes[shape.name]["error"]["httpStatusCode"] == shape.status, shape.name
    assert set(_SHAPES) == set(Problem)


def test_match_decodes_labels_once() -> None:
    found = match("POST", "/attached-policies/arn%3Aaws%3Aiot%3Aus-east-1%3A1%3Acert%2Fab")
    assert found is not None
    assert found.operation == "ListAttachedPolicies"
    assert found.labels == ("arn:aws:iot:us-east-1:1:cert/ab",)
    assert match("GET", "/things/a/shadow") is None  # the data plane's
    version = match("PATCH", "/policies/p/version/3")
    assert version is not None and version.labels == ("p", "3")


def test_account_numbers_are_stable_twelve_digits() -> None:
    numbers = {account_number(f"account-{n}") for n in range(1000)}
    assert len(numbers) == 1000
    assert all(len(n) == 12 and n.isdigit() for n in numbers)
    assert account_number("root") == account_number("root")


def test_certificate_arns_are_read_in_the_callers_account_and_region() -> None:
    arns = Arns("us-east-1")
    arn = arns.certificate("a", "AB" * 32)
    assert certificate_id_of(arns, "a", arn) == "ab" * 32
    assert certificate_id_of(arns, "b", arn) is None
    assert certificate_id_of(Arns("eu-west-1"), "a", arn) is None
    assert certificate_id_of(arns, "a", arns.thing("a", "t")) is None


@pytest.mark.parametrize(
    "text",
    [
        '{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*","Resource":"*"}}',
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:Publish",'
        '"iot:Receive"],"Resource":["arn:aws:iot:*:*:topic/${iot:ClientId}/*"]}]}',
    ],
)
def test_valid_documents(text: str) -> None:
    assert check_document(text) == text


def test_document_size_does_not_count_whitespace() -> None:
    statement = '{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}'
    body = '{"Version":"2012-10-17","Statement":[' + statement + "]}"
    padded = body.replace(",", "," + " " * 1000)
    assert len(padded) > 2048
    assert check_document(padded) == padded
    with pytest.raises(IdentityError) as caught:
        check_document(" " * 10)
    assert caught.value.problem is Problem.INVALID


def test_x509_checks() -> None:
    now = datetime.now(UTC)
    ca_cert, ca_key = x509util.ca("Unit CA")
    leaf = x509util.certificate("leaf", x509util.ec_key(), issuer=(ca_cert, ca_key))
    assert is_ca(ca_cert) and not is_ca(leaf)
    assert issued_by(leaf, ca_cert)
    assert not issued_by(ca_cert, leaf)
    check_validity(leaf, now)
    with pytest.raises(IdentityError, match="expired"):
        check_validity(leaf, now + timedelta(days=60))
    with pytest.raises(IdentityError, match="not valid yet"):
        check_validity(leaf, now - timedelta(days=1))
    assert load_certificate(x509util.pem(leaf)) == leaf
    with pytest.raises(IdentityError) as caught:
        load_certificate(None)
    assert caught.value.problem is Problem.INVALID


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("iot.example.com:8080", "iot.example.com"),
        ("iot.example.com", "iot.example.com"),
        ("[::1]:8080", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        (None, ""),
    ],
)
def test_request_host(header: str | None, host: str) -> None:
    assert request_host(header) == host


def test_a_version_2_registry_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    """The identity tables arrive with schema version 3; what the file held stays, and the
    identity store works on it (synchronously, as the command line or a test would use it)."""
    path = tmp_path / FILE_NAME
    old = RegistryStore(path, migrations=MIGRATIONS[:2])
    account = Registry(old).create_account("before-identities")
    old.close()
    store = RegistryStore(path)
    try:
        assert store.schema_version == len(MIGRATIONS) == 3
        assert Registry(store).get_account(account.account_id).name == "before-identities"
        identity = IdentityService(store, HubCA.load_or_create(tmp_path), region="us-west-2")
        thing = identity.things.create(account.account_id, "migrated", attributes={"a": "1"})
        record, _keys = identity.certificates.create_keys_and_certificate(
            account.account_id, active=True
        )
        identity.things.attach_principal(account.account_id, "migrated", record.certificate_id)
        found = identity.reader.certificate(record.certificate_id)
        assert found is not None and found.things == ("migrated",)
        assert identity.things.describe(account.account_id, "migrated") == thing
        with pytest.raises(IdentityError) as caught:
            identity.things.delete(account.account_id, "migrated")
        assert caught.value.problem is Problem.INVALID
    finally:
        store.close()


def test_aws_settings() -> None:
    assert load_settings(None, environ={}).aws.region == "us-east-1"
    settings = load_settings(
        None, environ={"THINGHUB_AWS_REGION": "ap-southeast-2", "THINGHUB_AWS_ENDPOINT_HOST": "h"}
    )
    assert (settings.aws.region, settings.aws.endpoint_host) == ("ap-southeast-2", "h")
    with pytest.raises(ConfigError, match=r"aws\.region"):
        load_settings(None, environ={"THINGHUB_AWS_REGION": "Mars"})
