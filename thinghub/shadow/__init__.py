"""AWS IoT device shadows: a JSON document per thing (classic) or per thing and name (named),
with desired and reported state, per-leaf timestamps, a version, and the delta between them.

``document`` is the pure logic (merge, delta, metadata, versions, validation), ``names`` the
thing and shadow names and the reserved MQTT topics, ``store`` the SQLite persistence (a table
in ``registry.db``), ``service`` what joins them to the broker: the HTTP dialect calls it, and
it answers devices' requests on ``$aws/things/.../shadow/...`` over MQTT.
"""
