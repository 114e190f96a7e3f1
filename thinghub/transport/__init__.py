"""The asyncio networking: TCP and TLS listeners, and MQTT over WebSocket. Bytes only: packet
layouts live in ``thinghub.mqtt`` and the rules in ``thinghub.broker``."""
