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
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from edge_runtime.core.config import Config
from edge_runtime.core.modalities import modalities_of
from edge_runtime.learning.checkpoint import checkpoint_modalities, upgrade_model_state

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

    Checked: labels against ``model.num_classes``; the stored samples' tensors against the configuration's
    modalities (the same names); each modality's channels (the size of one step: audio feature bins,
    colour channels, series channels, vector length) by name; and, when ``node.frame_size`` is set, the
    frame size of every ``frames`` modality. (Samples that are wrong in themselves, e.g. an empty clip, are
    not a configuration mismatch: the node evicts those at start-up and logs each.)
    """
    mc = config.model
    mods = modalities_of(config)
    labels: list[int] = []
    names: Counter = Counter()
    channels: dict[str, Counter] = {name: Counter() for name in mods}
    sizes: Counter = Counter()
    for key in store.keys():
        sample = store.get(key)
        if sample.label is not None:
            labels.append(int(sample.label))
        names[tuple(sorted(sample.tensors))] += 1
        for name, m in mods.items():
            x = sample.tensors.get(name)
            rank = len(m.spec().shape)
            if x is None or np.ndim(x) != rank:
                continue
            channels[name][int(np.shape(x)[0 if m.kind == "vector" else 1])] += 1
            if m.kind == "frames":
                size = tuple(int(d) for d in np.shape(x)[2:])
                if min(size) >= 1:  # a 0x0 frame is wrong in itself (evicted), not another configuration's
                    sizes[size] += 1
    if labels and max(labels) >= mc.num_classes:
        over = sum(label >= mc.num_classes for label in labels)
        return (f"model.num_classes is {mc.num_classes} but {where} holds {over} replay samples labelled "
                f"{mc.num_classes}..{max(labels)}; {fix(where.parent)}")
    ours = tuple(sorted(mods))
    if names and names.most_common(1)[0][0] != ours:  # mostly another configuration's (a few odd samples are evicted)
        theirs, count = names.most_common(1)[0]
        gone = [n for n in theirs if n not in ours]
        new = [n for n in ours if n not in theirs]
        return (f"this configuration's modalities are {list(mods)} but the samples stored in {where} carry the tensors "
                f"{list(theirs)} ({count} of {sum(names.values())} stored samples; not modalities here: {gone}, "
                f"missing: {new}); {fix(where.parent)}")
    for name, m in mods.items():
        seen = channels[name]
        if seen and set(seen) != {m.channels}:
            what = {"audio": "feature bins", "frames": "colour channels", "series": "channels", "vector": "values"}[m.kind]
            return (f"{_channels_key(config, name, m.kind)} is {m.channels} but the samples stored in {where} have "
                    f"{_most_common(seen)} {what} in modality {name!r} ({m.kind}); {fix(where.parent)}")
    if config.node.frame_size is not None and sizes and set(sizes) != {tuple(frame_size or ())}:
        size, _count = sizes.most_common(1)[0]
        return (f"node.frame_size is {list(config.node.frame_size)} but the samples stored in {where} have "
                f"{list(size)} frames ({_most_common(sizes).split(' ', 2)[-1].strip('()')}); {fix(where.parent)}")
    return None


def _channels_key(config: Config, name: str, kind: str) -> str:
    """The setting that gives modality ``name`` its channels."""
    if config.modalities[name].channels is not None:
        return f"modalities.{name}.channels"
    return "model.audio_features" if kind == "audio" else "model.visual_channels"


def checkpoint_problem(model_state: Mapping[str, Any], stored: Mapping[str, Any], path: Path,
                       modalities: Sequence[str] | None = None) -> str | None:
    """Why the model weights of a checkpoint (``stored``) do not fit this configuration's model (None when they do).

    ``modalities``: the model's modality names; a checkpoint of the built-in model written for other
    modalities is refused naming them. A checkpoint written before modalities were named (``audio.*``,
    ``visual.*`` keys) is checked as the model will load it (its keys renamed, :func:`upgrade_model_state`).
    """
    if modalities is not None:
        stored = upgrade_model_state(stored, modalities)
        ours, theirs = checkpoint_modalities(model_state), checkpoint_modalities(stored)
        # only for a model whose parameters are named by modality (the built-in one), never a guess about a user model
        if ours == list(modalities) and theirs is not None and theirs != ours:
            gone = [n for n in theirs if n not in modalities]
            new = [n for n in modalities if n not in theirs]
            detail = []
            if gone:
                detail.append(f"not in this configuration: {gone}")
            if new:
                detail.append(f"not in the checkpoint: {new}")
            return (f"checkpoint {path} was written for the modalities {list(theirs)} but this configuration declares "
                    f"{list(modalities)}" + (f" ({'; '.join(detail)})" if detail else " (another order)")
                    + f"; {fix(path.parent.parent)}")
    missing = sorted(set(model_state) - set(stored))
    extra = sorted(set(stored) - set(model_state))
    if missing or extra:
        names = ", ".join((missing or extra)[:3])
        side = "lacks" if missing else "has parameters this model lacks:"
        return f"checkpoint {path} was written for another model (it {side} {names}); check model.* settings; {fix(path.parent.parent)}"
    for name, tensor in model_state.items():
        theirs_shape = tuple(getattr(stored[name], "shape", ()))
        if tuple(tensor.shape) != theirs_shape:
            return (f"checkpoint {path} was written for another model: {name} is {list(theirs_shape)} there and "
                    f"{list(tensor.shape)} here (model.num_classes, model.* sizes, modalities.*.channels); {fix(path.parent.parent)}")
    return None
