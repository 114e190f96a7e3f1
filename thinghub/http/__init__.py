"""The HTTP server: health, metrics, MQTT over WebSocket, and (later) the cloud dialects."""
