"""ThingHub benchmark harness.

Run from the repository root::

    .venv/bin/python -m bench [--seconds 10] [--runs 3] [--scenario NAME ...]
                              [--broker thinghub|mosquitto|null ...] [--json FILE]
    .venv/bin/python -m bench --seconds 1 --runs 1      # quick smoke test

Modules:

* ``mqttload``   - the load generator: raw-socket asyncio Protocols, hand-built
  MQTT 3.1.1 packets, credit-window pacing, latency sampling, idle connections.
* ``nullbroker`` - a minimal forwarding server used to measure the generator ceiling.
* ``brokers``    - start/stop ThingHub, mosquitto and the null broker; RSS/CPU probes
  from /proc; CPU pinning; machine description.
* ``scenarios``  - fan-in, fan-out, qos1, topics1000, idle10k and the run record.
* ``report``     - medians, markdown tables, ratios, JSON.
* ``runner``     - command line and orchestration.

The harness never imports ThingHub: it talks MQTT to whatever listens on the port.
"""
