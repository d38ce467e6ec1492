"""Draw docs/architecture.png: how a sample travels from a device to the model, and the package layers.

Redraw after changing this file (matplotlib is a dependency of the package):

    .venv/bin/python docs/architecture.py                # writes docs/architecture.png
    .venv/bin/python docs/architecture.py --out arch.png # anywhere else

Left: the data path (device-sim -> ZeroMQ wire protocol v1 -> edge-node -> learner -> checkpoint, ONNX,
metrics; federation beside it). Right: the layers of ``edge_runtime`` from bottom to top; a module
imports only from its own layer or below (``tests/test_imports.py`` enforces it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent

DEVICE = "#dbe9f6"
NODE = "#fde9c9"
LEARN = "#dff0d8"
OUT = "#ececec"
FED = "#efe0f5"
EDGE = "#555555"

#: The layers of edge_runtime, bottom first: (package, what it holds, colour).
LAYERS = [
    ("core", "sample, config, policy settings, codec,\natomic write, names, validation, features", "#f4f4f4"),
    ("wire", "protocol v1: errors, schema, messages, decode", DEVICE),
    ("learning", "Learner, losses, distill, prototypes, evaluation,\ncheckpoint; model/, policies/, buffer/", LEARN),
    ("export", "ONNX export and onnxruntime session", OUT),
    ("ops", "metrics, status, history, report", OUT),
    ("federation", "Flower ClientApp / ServerApp, control channel", FED),
    ("node", "daemon: sessions, credit, acks, ledger,\nlearner thread, CURVE, start-up checks", NODE),
    ("cli", "edge-node commands (the only argparse)", "#f4f4f4"),
]


def box(ax, x, y, w, h, title, body="", color=OUT, title_size=10.5, body_size=8.5):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=color, edgecolor=EDGE, linewidth=1.0))
    if body:
        ax.text(x + w / 2, y + h - 0.22, title, ha="center", va="top", fontsize=title_size, weight="bold")
        ax.text(x + w / 2, y + h / 2 - 0.14, body, ha="center", va="center", fontsize=body_size, linespacing=1.35)
    else:
        ax.text(x + w / 2, y + h / 2, title, ha="center", va="center", fontsize=title_size, weight="bold")


def arrow(ax, start, end, label="", both=False, style="-|>", offset=(0.0, 0.12), size=8.0, rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=("<|-|>" if both else style), mutation_scale=13,
                                 color=EDGE, linewidth=1.2, connectionstyle=f"arc3,rad={rad}"))
    if label:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, label, ha="center", va="bottom", fontsize=size, style="italic")


def data_path(ax) -> None:
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 10.5)
    ax.axis("off")
    ax.set_title("A sample's path: device to model", fontsize=13, weight="bold", loc="left")

    # devices
    box(ax, 0.1, 6.2, 3.0, 3.3, "device-sim", "N simulated UAVs / sensors\n\ndata set -> scenario\n-> client (DEALER):\ncredit window, resend,\nresume, CURVE", DEVICE)
    # node
    box(ax, 4.3, 6.2, 3.6, 3.3, "edge-node (node)", "ROUTER socket, hello per\nconnection, validation,\ncredit + batched acks,\nde-dup by (device, seq),\nverdict ledger (SQLite)", NODE)
    arrow(ax, (3.15, 8.2), (4.25, 8.2), "samples")
    arrow(ax, (4.25, 7.3), (3.15, 7.3), "acks", offset=(0.0, -0.42))
    ax.text(3.7, 9.35, "ZeroMQ\nwire v1", ha="center", va="center", fontsize=8.5, weight="bold")

    # learner
    box(ax, 4.3, 1.6, 3.6, 3.9, "Learner.observe(batch)", "1 predict first (prequential)\n2 EMA prototypes per modality\n3-4 admission policy selects\n5 CE (ER-ACE) + offer to buffer\n6 replay + KD vs frozen teacher\n7 one verdict per sample", LEARN)
    arrow(ax, (6.1, 6.15), (6.1, 5.55), "ingest queue ->\nlearner thread", offset=(1.05, -0.3))

    # buffer
    box(ax, 0.4, 2.1, 2.9, 2.4, "replay buffer", "bounded (items, bytes)\nretention: class_balanced\n(CBRS, default), reservoir,\nmbs; memory or SQLite", LEARN, body_size=8.0)
    arrow(ax, (4.25, 3.6), (3.35, 3.6), "admit", offset=(0.0, 0.08))
    arrow(ax, (3.35, 2.8), (4.25, 2.8), "replay", offset=(0.0, -0.42))

    # outputs
    box(ax, 8.9, 7.6, 3.0, 1.9, "export", "ONNX file; models to\ndevices (PUB side channel)", OUT, body_size=8.0)
    box(ax, 8.9, 5.2, 3.0, 1.9, "checkpoint", "atomic, checksummed;\nresume bit-for-bit", OUT, body_size=8.0)
    box(ax, 8.9, 2.8, 3.0, 1.9, "ops", "/metrics, status.json,\nhistory.csv, report", OUT, body_size=8.0)
    box(ax, 8.9, 0.2, 3.0, 2.1, "federation", "control channel <->\nFlower ClientApp;\nServerApp: FedAvg,\nFedProx, FedAdam", FED, body_size=8.0)
    for y in (8.55, 6.15, 3.75):
        arrow(ax, (7.95, 3.55), (8.85, y))
    arrow(ax, (7.95, 2.4), (8.85, 1.25), "weights +\nprototypes", both=True, offset=(-0.1, -0.85), size=7.5)
    # models go back to the devices over the top
    ax.plot([10.4, 10.4, 1.6], [9.55, 9.95, 9.95], color=EDGE, linewidth=1.2, linestyle="--")
    ax.add_patch(FancyArrowPatch((1.6, 9.95), (1.6, 9.55), arrowstyle="-|>", mutation_scale=13, color=EDGE, linewidth=1.2))
    ax.text(6.1, 10.0, "ONNX models to devices (on-device inference, --infer)", ha="center", va="bottom", fontsize=8, style="italic")


def layers(ax) -> None:
    ax.set_xlim(0, 6.3)
    ax.set_ylim(0, 10.5)
    ax.axis("off")
    ax.set_title("Layers of edge_runtime (import downwards only)", fontsize=13, weight="bold", loc="left")
    h, gap, y0 = 1.02, 0.13, 0.15
    for i, (name, body, color) in enumerate(LAYERS):
        y = y0 + i * (h + gap)
        ax.add_patch(FancyBboxPatch((0.15, y), 4.6, h, boxstyle="round,pad=0.0,rounding_size=0.08",
                                    facecolor=color, edgecolor=EDGE, linewidth=1.0))
        ax.text(0.35, y + h / 2, name, ha="left", va="center", fontsize=10.5, weight="bold")
        ax.text(1.55, y + h / 2, body, ha="left", va="center", fontsize=7.4, linespacing=1.25)
    top = y0 + len(LAYERS) * (h + gap) - gap
    arrow(ax, (5.0, top - 0.2), (5.0, y0 + 0.2), "", style="-|>")
    ax.text(5.22, (top + y0) / 2, "may import", rotation=90, ha="center", va="center", fontsize=9, style="italic")
    # device_sim beside the stack: core and wire only
    ax.add_patch(FancyBboxPatch((5.5, y0), 0.65, 2 * h + gap, boxstyle="round,pad=0.0,rounding_size=0.08",
                                facecolor=DEVICE, edgecolor=EDGE, linewidth=1.0, linestyle="--"))
    ax.text(5.825, y0 + (2 * h + gap) / 2, "device_sim\n(core +\nwire only)", rotation=90, ha="center", va="center", fontsize=7.5)


def draw(out: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 7.4), gridspec_kw={"width_ratios": [12, 6.5]})
    data_path(left)
    layers(right)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Draw the architecture picture of docs/design.md.")
    ap.add_argument("--out", type=Path, default=HERE / "architecture.png", help="PNG to write (default: docs/architecture.png)")
    args = ap.parse_args(argv)
    print(draw(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
