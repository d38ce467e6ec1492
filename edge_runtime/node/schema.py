"""Schema negotiation: which tensors a device may send this node, and the one frame size the node batches.

The node's tensors are its configuration's modalities (``modalities:``, one tensor per name,
:func:`edge_runtime.core.validation.feature_schema`). A hello declares a schema. ``{}`` takes the
node's own (the model's input contract, which the welcome carries); a schema naming exactly the
node's modalities, with their dtypes and ranks, is welcomed with that contract (a size it fixes is
checked against the node's); a schema naming other tensors is refused naming the ones the node lacks
and the ones missing. The raw media schema (:data:`RAW_SCHEMA`: ``waveform`` + RGB ``frames``) is
welcomed when this node can compute the features itself: its modalities are exactly one ``audio``
and one ``frames`` modality, and its feature settings give their sizes.

Every ``frames`` modality has the node's one frame size, so every micro-batch and every replay batch
stacks: ``node.frame_size``, else the size most stored samples of the first ``frames`` modality
have, else ``features.image_size`` square. A node without a ``frames`` modality has no frame size.
The node's configuration decides it, never a device (issue 24, G3): a hello declaring another size is
refused naming the axis, and a degenerate schema (a size of 0) is refused outright.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.core import validation
from edge_runtime.core.config import Config
from edge_runtime.core.modalities import frames_modalities, modalities_of
from edge_runtime.core.sample import Sample, TensorSpec
from edge_runtime.core.validation import InputContract
from edge_runtime.node.logs import NODE_LOGGER

if TYPE_CHECKING:
    from edge_runtime.learning.buffer.sqlite import SqliteStore

log = logging.getLogger(NODE_LOGGER)

#: What a device sending ``--send raw`` declares: a mono waveform at ``features.sample_rate`` and RGB frames.
RAW_SCHEMA: dict[str, TensorSpec] = validation.raw_schema()


def stored_frame_size(store: "SqliteStore", name: str | None) -> tuple[int, int] | None:
    """The frame size most stored samples have in the ``frames`` modality ``name`` (None when ``name`` is
    None or the store holds no frames of a usable size)."""
    if name is None:
        return None
    sizes: Counter = Counter()
    for k in store.keys():
        frames = store.get(k).tensors.get(name)
        if frames is not None and np.ndim(frames) == 4:
            sizes[tuple(int(d) for d in np.shape(frames)[2:])] += 1
    usable = [(size, n) for size, n in sizes.most_common() if min(size) >= 1]  # an old node may have stored 0x0 frames
    return usable[0][0] if usable else None  # type: ignore[return-value]


def first_frames(config: Config) -> str | None:
    """The first ``frames`` modality of ``config`` (the one whose stored frames give the node's frame size), or None."""
    names = frames_modalities(config)
    return names[0] if names else None


def node_frame_size(config: Config, stored: tuple[int, int] | None) -> tuple[int, int] | None:
    """The node's one frame size: ``node.frame_size``, else the stored buffer's, else ``features.image_size``
    square; None when the configuration has no ``frames`` modality (nothing has a frame size)."""
    if not frames_modalities(config):
        return None
    if config.node.frame_size:
        return (int(config.node.frame_size[0]), int(config.node.frame_size[1]))
    if stored is not None:
        return stored
    return (config.features.image_size,) * 2  # type: ignore[return-value]


def raw_modalities(config: Config) -> tuple[str, str] | None:
    """``(audio name, frames name)``: the modalities raw media (``waveform``, ``frames``) become, when the
    configuration's modalities are exactly one ``audio`` and one ``frames`` modality; else None."""
    kinds = {m.kind: name for name, m in config.modalities.items()}
    if len(config.modalities) == 2 and set(kinds) == {"audio", "frames"}:
        return kinds["audio"], kinds["frames"]
    return None


def degenerate_problem(declared: dict[str, TensorSpec]) -> str | None:
    """Why a declared schema can describe no sample at all (a size of 0), or None."""
    for name, spec in declared.items():
        for axis, size in enumerate(spec.shape):
            if size == 0:
                return (f"schema.{name}.shape[{axis}] is 0 in {list(spec.shape)}: a tensor of that shape is empty; "
                        "declare sizes >= 1, or -1 for any size")
    return None


def features_problem(config: Config) -> str | None:
    """Why this node cannot turn raw media into its model's tensors (None when it can)."""
    names = raw_modalities(config)
    if names is None:
        have = ", ".join(f"{name} ({m.kind})" for name, m in config.modalities.items())
        return (f"raw media refused: raw media (waveform + frames) needs a node whose modalities are exactly one audio "
                f"and one frames modality; this node's are {have}; send the features of its modalities instead")
    mods = modalities_of(config)
    audio, frames = mods[names[0]], mods[names[1]]
    f = config.features
    if f.audio_dim != audio.channels:
        key = "features.n_mfcc" if f.audio == "mfcc" else "features.n_mels"
        return f"raw media refused: {key} gives {f.audio_dim} audio features but modality {audio.name!r} takes {audio.channels}"
    if f.channels != frames.channels:
        return f"raw media refused: features.channels is {f.channels} but modality {frames.name!r} takes {frames.channels} channels"
    return None


def describe(schema: dict[str, TensorSpec]) -> str:
    """``name dtype [shape]`` of each tensor, for error messages."""
    return ", ".join(f"{name} {spec.dtype} {list(spec.shape)}" for name, spec in schema.items())


def schema_problem(declared: dict[str, TensorSpec], expected: dict[str, TensorSpec]) -> str | None:
    """Why a device's declared schema cannot feed this node's model (None when it can)."""
    if set(declared) != set(expected):
        extra = [name for name in declared if name not in expected]
        missing = [name for name in expected if name not in declared]
        why = []
        if extra:
            listed = ", ".join(repr(n) for n in extra)
            why.append(f"{listed} {'is not a modality' if len(extra) == 1 else 'are not modalities'} of this node")
        if missing:
            why.append("missing: " + ", ".join(repr(n) for n in missing))
        return f"schema declares tensors {sorted(declared)} but this node takes {sorted(expected)}: {'; '.join(why)}"
    for name, spec in expected.items():
        got = declared[name]
        if got.dtype != spec.dtype or len(got.shape) != len(spec.shape):
            return (f"tensor {name!r} declared {got.dtype} {list(got.shape)}; this node takes {spec.dtype} "
                    f"{list(spec.shape)} (-1: any size)")
        for axis, (g, e) in enumerate(zip(got.shape, spec.shape)):
            if e != -1 and g != -1 and g != e:  # a size the device leaves free is told by the welcome
                return (f"schema.{name}.shape[{axis}] is {g} but this node takes {e}: declared {list(got.shape)}, "
                        f"this node takes {list(spec.shape)} (-1: any size; the welcome tells the node's sizes)")
    return None


_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, cached (numpy computes the name anew on every access)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


class SchemaNegotiator:
    """The node's frame size and the contracts it welcomes devices with (used by the IO thread only)."""

    def __init__(self, config: Config, frame_size: tuple[int, int] | None) -> None:
        self.config = config
        self.num_classes = config.model.num_classes
        # see node_frame_size: from the configuration or the stored buffer, never a device; None without a frames modality
        self.frame_size = frame_size
        self._raw_contract = validation.raw_contract(config)
        self._features_contract = validation.model_contract(config, frame_size)

    def stored_problem(self, sample: Sample) -> str | None:
        """Why a stored sample cannot be replayed with the others (its contract code), or None."""
        problem = validation.model_contract(self.config, self.frame_size, bounded=False).check(sample)
        return None if problem is None else problem.code

    def features_contract(self) -> InputContract:
        """The model's input contract at the node's frame size."""
        return self._features_contract

    def largest_frame(self) -> int:
        """Bytes of the largest tensor frame a sample this node welcomes can carry (float32 features; raw
        media when this node takes them); the header frame is bounded by the wire's own limit."""
        lim = validation.limits_of(self.config)
        sizes = [4]
        for name, spec in self._features_contract.schema.items():  # one tensor per modality, at its bounds
            bounds = self._features_contract.max_shape.get(name, ())
            n = 1
            for axis, size in enumerate(spec.shape):
                top = bounds[axis] if axis < len(bounds) else None
                n *= size if size != -1 else int(top or 1)
            sizes.append(n * np.dtype(spec.dtype).itemsize)
        if features_problem(self.config) is None:
            s = lim["max_raw_frame_size"]
            sizes += [lim["max_waveform_samples"] * 4, lim["max_raw_frames"] * s * s * 3]
        return max(sizes)

    def welcome(self, declared: dict[str, TensorSpec]) -> tuple[InputContract | None, bool, str | None]:
        """(contract, raw, problem) for a hello's declared schema; ``{}`` means "the node's schema"."""
        features = self._features_contract
        if not declared:
            return features, False, None
        problem = degenerate_problem(declared)
        if problem is not None:
            return None, False, problem
        problem = schema_problem(declared, features.schema)
        if problem is None:
            return features, False, None
        if schema_problem(declared, RAW_SCHEMA) is None:
            problem = features_problem(self.config)
            image = (self.config.features.image_size,) * 2
            if problem is None and self.frame_size is not None and self.frame_size != image:
                problem = (f"raw media refused: its frames become features.image_size {image[0]}x{image[1]} but this node "
                           f"batches {self.frame_size[0]}x{self.frame_size[1]} frames (node.frame_size / its stored buffer)")
            if problem:
                return None, True, problem
            return self._raw_contract, True, None
        raw = f"; or send raw media: {describe(RAW_SCHEMA)}" if features_problem(self.config) is None else ""
        return None, False, problem + f"{raw}; or declare {{}} to take the welcome's schema (this node's: {describe(features.schema)})"

    def check(self, contract: InputContract, raw: bool, device: str,
              sample: Sample) -> tuple[validation.Problem | None, InputContract]:
        """The cheap part of the input contract (shapes, bounds, label, split); finiteness runs on the learner thread.

        Returns the problem (None: queue it) and the contract the device keeps (the one it was welcomed with).
        """
        shapes = {n: (_dtype_name(t.dtype), t.shape) for n, t in sample.tensors.items()}
        return contract.check_shapes(shapes) or validation.check_label_split(sample.label, sample.split, self.num_classes), contract
