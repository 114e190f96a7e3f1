"""Sans-IO MQTT 3.1.1 / 5.0: packets, properties, reason codes, codec, connection state.

Nothing in this package performs I/O or imports asyncio, sockets or sqlite: bytes go in,
packets and bytes come out (the h11 model).
"""
