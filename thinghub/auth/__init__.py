"""Device authentication and authorisation as typed decisions.

``aliyun_device``: the Alibaba device sign-in (clientId/username/HMAC password).
``topic_acl``: where a device may publish and subscribe, from its product's topic categories.
Both are pure: the broker passes in what it knows and maps the decision to reason codes.
"""
