"""``edge-node federate`` prints each round as it ends: it tails the rounds.json the ServerApp rewrites per round."""

from __future__ import annotations

import json
import queue
import time

from edge_runtime.cli.federation import RoundPrinter, round_line


def _round(n: int) -> dict:
    return {"round": n, "replies": 3, "failures": 0, "bytes_up": 2048 * n, "bytes_down": 1024, "seconds": 1.5}


def test_each_round_is_printed_once_as_the_server_app_writes_it(tmp_path):
    path = tmp_path / "rounds.json"
    lines: queue.Queue[str] = queue.Queue()
    printer = RoundPrinter(path, total=3, write=lines.put, interval=0.02).start()
    try:
        rounds = []
        for n in (1, 2, 3):
            rounds.append(_round(n))
            path.write_text(json.dumps({"rounds": rounds}, indent=2))  # as the ServerApp does, at each round's end
            line = lines.get(timeout=30)  # printed before the next round is written
            assert line == f"{round_line(_round(n))}  [{n}/3]"
        path.write_text('{"rounds": [')  # caught mid-write: skipped, nothing printed twice
        time.sleep(0.1)
    finally:
        printer.stop(rounds)
    assert lines.empty(), "a round was printed twice"
    assert round_line(_round(2)) == "round 2: 3 replies, 0 failed, 5 KiB, 1.5 s"


def test_rounds_the_tail_missed_are_printed_at_the_end(tmp_path):
    """A round that ends between the last poll and done.json comes from the final log, once."""
    printed: list[str] = []
    printer = RoundPrinter(tmp_path / "rounds.json", total=2, write=printed.append, interval=60)
    printer.start()
    printer.stop([_round(1), _round(2)])
    printer.stop([_round(1), _round(2)])
    assert [line.split(":")[0] for line in printed] == ["round 1", "round 2"]
