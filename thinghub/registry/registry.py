"""The registry: accounts, access keys, instances, products, devices, topic categories.

Every operation the Alibaba RPC API needs (reference §2.2-§2.4) is a method of ``Registry``, and
every one of them is scoped by ``account_id`` and, where used, ``instance_id``. Tenancy
(docs/architecture.md): a ProductKey, IotId, TopicId or ApplyId of another account, or of another
instance of the same account, gets exactly the answer of one that does not exist.

Instances: products belong to one instance or to none. ``instance_id=None`` addresses the
account's products without an instance, a named instance only its own, like the cloud, where a
call without ``IotInstanceId`` does not see an Enterprise instance's products (reference §1.1;
the DeleteProduct page: "if your instance has an ID, you must configure this parameter").
An unknown instance id gets ``iot.Sre.IotInstanceNotFound``.

The API's string parameters can be passed through unchanged: numbers (NodeType, TopicId,
CurrentPage ...) are accepted as ``int`` or decimal ``str`` and validated here, so a dialect
only translates names.

A few methods are *not* scoped, because the caller has no account yet: ``lookup_access_key``
(the gateway, before the signature is checked), and ``lookup_device``,
``device_signed_in``/``device_signed_out`` (presence), ``topic_categories_for_product`` (the
broker, for a device that signs in with ProductKey and DeviceName, which are globally unique).

Threads (docs/architecture.md "Threads"): reads may run on any thread; on the event loop they
wait for no writer (``store.py``). In the running hub the API's writes run on the registry
writer thread (``writer.py``, ``Registry.writer``), and presence is recorded on the event loop
in memory (``presence.py``) and written by the presence writer thread
(``presence_writer.py``). Without them (the command line, tests) every call does its own
writing on the caller's thread.

The operations live in one mixin per resource (``accounts``, ``products``, ``devices``,
``topics``) over ``_base.RegistryBase``, which holds the settings and the scoping lookups.
"""

from __future__ import annotations

from ._base import DEFAULT_TOPIC_CATEGORIES, device_from_row
from .accounts import ROOT_ACCOUNT_ID, AccountsMixin
from .devices import DevicesMixin
from .products import ProductsMixin
from .topics import TopicsMixin

__all__ = ["DEFAULT_TOPIC_CATEGORIES", "ROOT_ACCOUNT_ID", "Registry", "device_from_row"]


class Registry(AccountsMixin, ProductsMixin, DevicesMixin, TopicsMixin):
    """Registry operations over a ``RegistryStore``. Thread-safe (the store serialises
    writes), except presence, which one thread records (the event loop's, in the hub).

    ``Registry(store, *, clock=wall_clock_ms, max_products_per_account=1000,
    max_topic_categories_per_product=50, max_batch_register=1000, max_batch_status=50,
    cache_ttl_s=2.0, presence_max_pending=200_000)``
    """
