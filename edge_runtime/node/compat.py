"""Is the stored state this configuration's? Read-only checks that run before the node changes its folder.

A node started on a folder written under another configuration (fewer classes, other feature
sizes, another frame size, another model) used to "repair" the folder on its way to failing: it
evicted the stored samples that did not fit and moved ``history.csv`` aside, then stopped on the
checkpoint. These checks refuse such a start with one line naming the setting and the stored value,
before anything in the folder is written, so the folder stays as it was (docs/operations.md, "The
state folder"). Changing a node's classes or model on purpose is an explicit command:
``edge-node state reset --state-dir DIR`` moves the folder aside to a dated backup (or give a new
``node.state_dir``); the refusal says so.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from edge_runtime.core.config import Config

if TYPE_CHECKING:
    from edge_runtime.learning.buffer.sqlite import SqliteStore

def fix(state_dir: Path) -> str:
    """What to do about a mismatch of the folder ``state_dir`` (the end of every refusal here)."""
    return (f"run with the configuration this folder was written with, or, to start fresh on purpose, move it aside "
            f"with `edge-node state reset --state-dir {state_dir}` (a dated backup) or give a new node.state_dir "
            "(the folder is unchanged)")


def _most_common(values: Counter) -> str:
    value, count = values.most_common(1)[0]
    return f"{value} ({count} of {sum(values.values())} stored samples)"


def stored_state_problem(config: Config, store: "SqliteStore", frame_size: tuple[int, int] | None, where: Path) -> str | None:
    """Why the replay samples stored in ``where`` do not belong to ``config`` (None when they do).

    Checked: labels against ``model.num_classes``, audio feature bins against ``model.audio_features``,
    video channels against ``model.visual_channels``, and, when ``node.frame_size`` is set, the
    frame size. (Samples that are wrong in themselves, e.g. an empty clip, are not a configuration
    mismatch: the node evicts those at start-up and logs each.)
    """
    mc = config.model
    labels: list[int] = []
    bins: Counter = Counter()
    channels: Counter = Counter()
    sizes: Counter = Counter()
    for key in store.keys():
        sample = store.get(key)
        if sample.label is not None:
            labels.append(int(sample.label))
        audio, video = sample.tensors.get("audio"), sample.tensors.get("video")
        if audio is not None and np.ndim(audio) == 2:
            bins[int(np.shape(audio)[1])] += 1
        if video is not None and np.ndim(video) == 4:
            channels[int(np.shape(video)[1])] += 1
            size = tuple(int(d) for d in np.shape(video)[2:])
            if min(size) >= 1:  # a 0x0 frame is wrong in itself (evicted), not another configuration's
                sizes[size] += 1
    if labels and max(labels) >= mc.num_classes:
        over = sum(label >= mc.num_classes for label in labels)
        return (f"model.num_classes is {mc.num_classes} but {where} holds {over} replay samples labelled "
                f"{mc.num_classes}..{max(labels)}; {fix(where.parent)}")
    if bins and set(bins) != {mc.audio_features}:
        return f"model.audio_features is {mc.audio_features} but the samples stored in {where} have {_most_common(bins)} audio bins; {fix(where.parent)}"
    if channels and set(channels) != {mc.visual_channels}:
        return (f"model.visual_channels is {mc.visual_channels} but the samples stored in {where} have "
                f"{_most_common(channels)} video channels; {fix(where.parent)}")
    if config.node.frame_size is not None and sizes and set(sizes) != {tuple(frame_size or ())}:
        size, _count = sizes.most_common(1)[0]
        return (f"node.frame_size is {list(config.node.frame_size)} but the samples stored in {where} have "
                f"{list(size)} frames ({_most_common(sizes).split(' ', 2)[-1].strip('()')}); {fix(where.parent)}")
    return None


def checkpoint_problem(model_state: Mapping[str, Any], stored: Mapping[str, Any], path: Path) -> str | None:
    """Why the model weights of a checkpoint (``stored``) do not fit this configuration's model (None when they do)."""
    missing = sorted(set(model_state) - set(stored))
    extra = sorted(set(stored) - set(model_state))
    if missing or extra:
        names = ", ".join((missing or extra)[:3])
        side = "lacks" if missing else "has parameters this model lacks:"
        return f"checkpoint {path} was written for another model (it {side} {names}); check model.* settings; {fix(path.parent.parent)}"
    for name, tensor in model_state.items():
        theirs = tuple(getattr(stored[name], "shape", ()))
        if tuple(tensor.shape) != theirs:
            return (f"checkpoint {path} was written for another model: {name} is {list(theirs)} there and "
                    f"{list(tensor.shape)} here (model.num_classes, model.* sizes); {fix(path.parent.parent)}")
    return None
