"""ThingHub benchmark harness.

Run from the repository root::

    .venv/bin/python -m bench [--seconds 10] [--runs 3] [--scenario NAME ...]
                              [--broker thinghub|mosquitto|null ...] [--json FILE]
    .venv/bin/python -m bench --seconds 1 --runs 1      # quick smoke test
    .venv/bin/python -m bench --scenario signin [--devices 100000] [--window 512]

Modules:

* ``mqttload``   - the load generator: raw-socket asyncio Protocols, hand-built
  MQTT 3.1.1 packets, credit-window pacing, latency sampling, idle connections.
* ``nullbroker`` - a minimal forwarding server used to measure the generator ceiling.
* ``brokers``    - start/stop ThingHub, mosquitto and the null broker; RSS/CPU probes
  from /proc; CPU pinning; machine description.
* ``scenarios``  - fan-in, fan-out, qos1, topics1000, idle10k, signin and the run record.
* ``signin``     - the sign-in scenario (ThingHub only): Alibaba devices registered through
  the API, signed in cold and in a reconnect storm (3.1.1 and 5.0) beside as many anonymous
  clients, a timed QoS 0 stream throughout, device statuses checked afterwards.
  ``connstorm`` (connect waves), ``latency_stream`` (the stream, its own process),
  ``aliyun_devices`` (BatchRegisterDevice, QueryPageByApplyId, BatchGetDeviceState),
  ``signin_report``.
* ``report``     - medians, markdown tables, ratios, JSON; ``targets`` judges the figures
  that have a target (MISSED is reported, never fatal).
* ``runner``     - command line and orchestration.

The harness never imports ThingHub: it talks MQTT (and the cloud HTTP APIs) to whatever
listens; the sign-in scenario also reads a stopped hub's registry.db, read-only.

Exit status: 0, or 1 when a scenario FAILED in a way that is wrong rather than slow (signin:
refused sign-ins, wrong device statuses); 130 when interrupted.
"""
