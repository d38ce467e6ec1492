"""``edge-node demo``: the learner over a simulated synthetic audio-visual stream, in one process.

This is the only place in ``edge_runtime`` that imports ``device_sim`` (to simulate the devices).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from tqdm import tqdm

from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset
from device_sim.scenario import make_order, replay
from edge_runtime.config import Config
from edge_runtime.learner import Learner


def run_demo(
    config: Config,
    samples: int = 6000,
    batch_size: int = 32,
    scenario: str = "class-incremental",
    classes_per_task: int = 2,
    test_samples: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Stream ``samples`` synthetic samples through a :class:`Learner`; return the report dict."""
    mc = config.model
    data_cfg = SyntheticConfig(num_classes=mc.num_classes, audio_features=mc.audio_features, channels=mc.visual_channels, seed=seed, size=samples)
    dataset = SyntheticDataset(data_cfg)
    test = dataset.test_set(test_samples)
    order = make_order(scenario, dataset.labels(), seed=seed, classes_per_task=classes_per_task)
    learner = Learner(config)

    started = time.perf_counter()
    recent: deque[bool] = deque(maxlen=500)
    per_task: list[dict[str, Any]] = []
    bar = tqdm(total=len(order.indices), unit="sample", disable=not progress, dynamic_ncols=True, desc="learning", mininterval=0.5)
    chunk = []
    stream = replay(dataset, order, device="sim-0")
    task_ends = {int(i) for i in (order.task_of[1:] != order.task_of[:-1]).nonzero()[0]} | {len(order.indices) - 1}

    def learn(chunk: list) -> None:
        before = learner.stats.preq_correct
        learner.observe(chunk)
        hits = learner.stats.preq_correct - before
        recent.extend([True] * hits + [False] * (len(chunk) - hits))
        bar.update(len(chunk))
        bar.set_postfix(acc_recent=f"{sum(recent) / max(len(recent), 1):.2f}", buffer=len(learner.buffer), updates=learner.stats.updates)

    for pos, sample in enumerate(stream):
        chunk.append(sample)
        if len(chunk) == batch_size or pos in task_ends:
            learn(chunk)
            chunk = []
        if pos in task_ends and scenario == "class-incremental":
            task = int(order.task_of[pos])
            seen = {c for t in order.task_classes[: task + 1] for c in t}
            result = learner.evaluate(s for s in test if s.label in seen)
            per_task.append({"task": task, "classes": order.task_classes[task], "accuracy_on_seen": result["accuracy"]})
            bar.write(f"task {task} {order.task_classes[task]} done: accuracy on the {len(seen)} classes seen so far {result['accuracy']:.3f}")
    bar.close()
    wall = time.perf_counter() - started
    final = learner.evaluate(test)
    summary = learner.summary()
    report = {
        "dataset": "synthetic",
        "scenario": scenario,
        "policy": config.selection.policy,
        "samples_seen": summary["samples_seen"],
        "verdicts": summary["verdicts"],
        "prequential_accuracy": summary["prequential_accuracy"],
        "final_accuracy": final["accuracy"],
        "audio_only_accuracy": final["audio_accuracy"],
        "visual_only_accuracy": final["video_accuracy"],
        "per_task": per_task,
        "buffer_items": summary["buffer_items"],
        "buffer_bytes": summary["buffer_bytes"],
        "buffer_classes": summary["buffer_classes"],
        "updates": summary["updates"],
        "wall_seconds": round(wall, 3),
        "samples_per_second": round(summary["samples_seen"] / wall, 1) if wall > 0 else None,
        "config": config.model_dump(mode="json"),
    }
    _print_table(report, chance=1.0 / mc.num_classes)
    return report


def _print_table(report: dict[str, Any], chance: float) -> None:
    rows = [
        ("samples streamed", f"{report['samples_seen']}"),
        ("verdicts", ", ".join(f"{k} {v}" for k, v in sorted(report["verdicts"].items()))),
        ("prequential accuracy", f"{report['prequential_accuracy']:.3f}"),
        ("final accuracy (all classes)", f"{report['final_accuracy']:.3f}  (chance {chance:.3f})"),
        ("audio-only / visual-only", f"{report['audio_only_accuracy']:.3f} / {report['visual_only_accuracy']:.3f}"),
        ("replay buffer", f"{report['buffer_items']} items, {report['buffer_bytes'] / 1024:.0f} KiB, per class {report['buffer_classes']}"),
        ("updates", f"{report['updates']}"),
        ("throughput", f"{report['samples_per_second']} samples/s over {report['wall_seconds']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nedge-node demo summary")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
