"""The console on one node of a cluster shows, and acts on, a device's session held by another
node: its page says connected, on which node, with its subscriptions; "disconnect" closes the
connection where it is. Three real ``thinghub serve --cluster`` nodes on a real NATS cluster,
the console's JSON API over HTTP as its page calls it, a paho device."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pahoclient
from hubnodes import KEY_ID, SECRET, HubNode, settle
from pahoclient import unique

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "console"))
from consolehub import Browserless

MakeClient = Callable[..., pahoclient.Client]


def test_a_session_on_another_node_is_shown_and_disconnected_from_the_console(
    nodes: list[HubNode], client: MakeClient
) -> None:
    n1, n2, _n3 = nodes
    # Registered in n1's registry (each node keeps its own here); on n2, where the product is
    # unknown, the device connects with its client id as an anonymous client of the account.
    product = n1.cli("product", "create", unique("con").replace("-", "_"))
    product_key = (product[0] if isinstance(product, list) else product)["product_key"]
    name = unique("dev").replace("-", "_")
    created = n1.cli("device", "register", product_key, name)
    iot_id = (created[0] if isinstance(created, list) else created)["iot_id"]
    device = client(n2, client_id=f"{product_key}.{name}", session_expiry=300)
    device.subscribe(f"/{product_key}/{name}/user/get", 1)
    settle(nodes)

    console = Browserless(f"http://{n1.host}:{n1.http_port}")
    assert console.sign_in(KEY_ID, SECRET).status == 200
    page = console.get(f"/devices/{iot_id}")
    assert page.status == 200, page.body
    session = page.body["session"]
    assert session["connected"] is True and session["node"] == n2.name
    assert session["persistent"] is True and session["expiryInterval"] == 300
    assert [s["filter"] for s in session["subscriptions"]] == [f"/{product_key}/{name}/user/get"]
    assert session["connection"]["protocol"] == "5.0"

    assert console.post(f"/devices/{iot_id}/disconnect").status == 200
    assert device.expect_disconnect() == 0x98  # Administrative action, sent by n2
    after = console.get(f"/devices/{iot_id}").body["session"]
    assert after["connected"] is False and after["node"] == n2.name  # the session stays
    assert console.post(f"/devices/{iot_id}/disconnect").status == 409  # nothing to close
