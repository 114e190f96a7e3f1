"""ThingHub: a self-hosted IoT messaging hub (MQTT 3.1.1/5.0 + cloud-compatible HTTP APIs)."""

__version__ = "0.1.0"
