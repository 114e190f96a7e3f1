"""The child side of a process hub (``process.py``): ``python -m thinghub.testing.child``.

It talks JSON lines: the first line on standard input is the hub's options; once the hub
listens, one line ``{"ready": {...}}`` (or ``{"error": "..."}``) goes to standard output.
Then every line read is a command (``{"op": "reset"}``), answered by one line (``{"ok":
...}`` or ``{"error": "..."}``). The end of standard input stops the hub: the parent closes
it, and so does the kernel when the parent dies, however it dies; the child then removes its
temporary data directory and exits. SIGTERM stops it the same way. The hub's log goes to
standard error.

Standard input is read by a daemon thread, so that a read never holds up the loop's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
from typing import Any

from .inloop import LoopHub
from .options import HubOptions
from .threaded import new_event_loop

STOP = ""
#: commands read ahead of their answers: the parent sends one and waits for its answer
COMMANDS = 16


def main() -> int:
    first = sys.stdin.readline()
    try:
        config = json.loads(first)
        options = HubOptions.build(
            config["settings"],
            access_key_id=config["access_key_id"],
            access_key_secret=config["access_key_secret"],
        )
    except Exception as error:  # the parent asked for something unusable: say what
        _send({"error": f"{type(error).__name__}: {error}"})
        return 2
    level = str(options.settings.get("log_level", "WARNING")).upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    loop = new_event_loop()
    try:
        return loop.run_until_complete(_serve(options))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


async def _serve(options: HubOptions) -> int:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue(maxsize=COMMANDS)

    def read() -> None:
        for line in sys.stdin:
            asyncio.run_coroutine_threadsafe(lines.put(line), loop).result()
        asyncio.run_coroutine_threadsafe(lines.put(STOP), loop).result()

    def terminate() -> None:
        # The queue has room: the parent waits for each answer before its next command.
        with contextlib.suppress(asyncio.QueueFull):
            lines.put_nowait(STOP)

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        hub = await LoopHub.start(options)
    except Exception as error:
        _send({"error": f"{type(error).__name__}: {error}"})
        return 1
    try:
        ports = hub.ports
        _send(
            {
                "ready": {
                    "host": ports.host,
                    "mqtt": ports.mqtt,
                    "http": ports.http,
                    "tls": ports.tls,
                    "data_dir": str(hub.data_dir),
                    "ca_pem": hub.ca_pem,
                }
            }
        )
        threading.Thread(target=read, name="thinghub-child-stdin", daemon=True).start()
        while (line := await lines.get()) != STOP:
            _send(await _command(hub, line))
    finally:
        await hub.stop()
    return 0


async def _command(hub: LoopHub, line: str) -> dict[str, Any]:
    try:
        op = json.loads(line).get("op")
        if op == "reset":
            report = await hub.reset()
            return {
                "ok": {
                    "connections": report.connections,
                    "sessions": report.sessions,
                    "retained": report.retained,
                    "rows": report.rows,
                }
            }
        return {"error": f"unknown command {op!r}"}
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}


def _send(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
