"""``flower-supernode`` with shorter fixed waits (Flower 1.42): the one place we patch Flower.

Flower 1.42's SuperNode loop (``flwr/supernode/start_client_internal.py``) has two waits written as
constants, with no option or environment variable to change them:

* idle: after a poll of the SuperLink that brought no message, ``time.sleep(3)`` before the next;
  a SuperNode polls once right after pushing a reply, usually before the ServerApp has sent the
  next phase, so almost every ``train`` and ``evaluate`` message waits 2-3 s to be picked up;
* reply: while its ClientApp runs, ``time.sleep(0.5)`` between looks for the reply (the SuperNode's
  own state, in memory).

This module runs Flower's own ``flower-supernode`` (same arguments) with that module's ``time``
replaced by a proxy whose ``sleep(3)`` sleeps ``--idle-poll-s`` (default :data:`IDLE_POLL_S`) and
``sleep(0.5)`` :data:`REPLY_POLL_S`; every other call is the real ``time``. It refuses to patch (and
runs Flower unchanged, with a warning) when Flower is not 1.42 or the module no longer uses
``time`` this way. Cost: each idle SuperNode asks the SuperLink for messages every
``IDLE_POLL_S`` seconds instead of 3 (one small HTTP request).

    python -m edge_runtime.federation.supernode --idle-poll-s 0.5 --insecure --superlink 127.0.0.1:9200 --port 9201 ...
"""

from __future__ import annotations

import logging
import sys
import time
from types import ModuleType
from typing import Any

log = logging.getLogger("edge_runtime.federation.supernode")

IDLE_POLL_S = 0.5
REPLY_POLL_S = 0.1
FLOWER_IDLE_S, FLOWER_REPLY_S = 3, 0.5  # the constants of flwr 1.42's start_client_internal.py


class ShorterSleeps:
    """Stands in for the ``time`` module in one Flower module: two of its sleeps shortened, the rest real."""

    def __init__(self, idle_s: float, reply_s: float) -> None:
        self.waits = {FLOWER_IDLE_S: idle_s, FLOWER_REPLY_S: reply_s}

    def sleep(self, seconds: float) -> None:
        time.sleep(self.waits.get(seconds, seconds))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def patch(module: ModuleType, idle_s: float, reply_s: float = REPLY_POLL_S) -> bool:
    """Shorten the waits of Flower's SuperNode loop ``module``; False (unchanged) when it is not the expected code."""
    import inspect

    import flwr

    version = getattr(flwr, "__version__", "")
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        source = ""
    expected = (version.startswith("1.42.") and getattr(module, "time", None) is time
                and f"time.sleep({FLOWER_IDLE_S})" in source and f"time.sleep({FLOWER_REPLY_S})" in source)
    if not expected:
        log.warning("flwr %s: its SuperNode loop is not the one this patch knows; running it unchanged", version)
        return False
    module.time = ShorterSleeps(idle_s, reply_s)  # type: ignore[attr-defined]
    return True


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    idle_s = IDLE_POLL_S
    if "--idle-poll-s" in args:
        i = args.index("--idle-poll-s")
        idle_s = float(args[i + 1])
        del args[i:i + 2]
    if not 0 < idle_s <= FLOWER_IDLE_S:
        raise SystemExit(f"--idle-poll-s must be in (0, {FLOWER_IDLE_S}], got {idle_s}")
    log.addHandler(logging.StreamHandler())  # our lines only: a root handler would repeat Flower's own log
    log.setLevel(logging.INFO)
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    if patch(loop, idle_s):
        log.info("SuperNode waits: %.2f s when idle (Flower: %s s), %.2f s for a reply (Flower: %s s)",
                 idle_s, FLOWER_IDLE_S, REPLY_POLL_S, FLOWER_REPLY_S)
    sys.argv = ["flower-supernode", *args]  # Flower's argparse and telemetry read the program name
    flower_supernode()


if __name__ == "__main__":
    main()
