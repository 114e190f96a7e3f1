"""AWS IoT identities: things, X.509 certificates (the hub's CA, registered CAs), policies.

``IdentityService`` (``service.py``) is the entry point: ``things``, ``certificates``,
``policies`` (the operations, on ``registry.db``), ``reader`` (the read interface the TLS
sign-in and policy evaluation use, ``reader.py``), ``ca`` (the hub's CA, ``ca.py``) and the
certificate status observers. Every listing pages one way (``paging.py``: keyset pages,
resumed after the last key returned). Knows nothing of HTTP: the AWS IoT control plane
(``http/aws_control``) renders its records and maps its ``IdentityError`` problems.

For the devices' side (``auth/aws_device.py``): ``policy_eval.py`` evaluates AWS IoT policies
(pure), ``changes.py`` tells caches which committed writes may have made them stale, and
``server_cert.py`` keeps the TLS listener's certificate that the hub's CA signs.
"""
