"""Several hubs acting as one, on NATS: docs/architecture.md, *Cluster*.

Importing this package imports nothing else: ``thinghub/config.py`` reads ``settings``
without loading the NATS client, which only a clustered hub needs (``node.py``).
"""
