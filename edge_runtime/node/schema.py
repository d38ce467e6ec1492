"""Schema negotiation: which tensors a device may send this node, and the one frame size the node batches.

A hello declares a schema. ``{}`` takes the node's own (the model's input contract); a schema
matching the model's tensors is welcomed with that contract (a frame size it fixes is checked and
may pin the node's); the raw media schema (:data:`RAW_SCHEMA`) is welcomed when this node can
compute the features itself. Frames have one size per node, so every micro-batch and every replay
batch stacks: ``node.frame_size``, else the size most stored samples have, else
``features.image_size`` square. The node's configuration decides it, never a device (issue 24, G3):
a hello declaring another size is refused naming the axis, and a degenerate schema (a size of 0) is
refused outright.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.core import validation
from edge_runtime.core.config import Config
from edge_runtime.core.sample import Sample, TensorSpec
from edge_runtime.core.validation import InputContract
from edge_runtime.node.logs import NODE_LOGGER

if TYPE_CHECKING:
    from edge_runtime.learning.buffer.sqlite import SqliteStore

log = logging.getLogger(NODE_LOGGER)

#: What a device sending ``--send raw`` declares: a mono waveform at ``features.sample_rate`` and RGB frames.
RAW_SCHEMA: dict[str, TensorSpec] = validation.raw_schema()


def stored_frame_size(store: "SqliteStore") -> tuple[int, int] | None:
    """The frame size most stored samples have (None when the store holds no video of a usable size)."""
    sizes = Counter(tuple(int(d) for d in store.get(k).tensors["video"].shape[2:])
                    for k in store.keys() if "video" in store.get(k).tensors
                    and np.ndim(store.get(k).tensors["video"]) == 4)
    usable = [(size, n) for size, n in sizes.most_common() if min(size) >= 1]  # an old node may have stored 0x0 frames
    return usable[0][0] if usable else None  # type: ignore[return-value]


def node_frame_size(config: Config, stored: tuple[int, int] | None) -> tuple[int, int]:
    """The node's one frame size: ``node.frame_size``, else the stored buffer's, else ``features.image_size`` square."""
    if config.node.frame_size:
        return (int(config.node.frame_size[0]), int(config.node.frame_size[1]))
    if stored is not None:
        return stored
    return (config.features.image_size,) * 2  # type: ignore[return-value]


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
    f, m = config.features, config.model
    if f.audio_dim != m.audio_features:
        key = "features.n_mfcc" if f.audio == "mfcc" else "features.n_mels"
        return f"raw media refused: {key} gives {f.audio_dim} audio features but model.audio_features is {m.audio_features}"
    if f.channels != m.visual_channels:
        return f"raw media refused: features.channels is {f.channels} but model.visual_channels is {m.visual_channels}"
    return None


def describe(schema: dict[str, TensorSpec]) -> str:
    """``name dtype [shape]`` of each tensor, for error messages."""
    return ", ".join(f"{name} {spec.dtype} {list(spec.shape)}" for name, spec in schema.items())


def schema_problem(declared: dict[str, TensorSpec], expected: dict[str, TensorSpec]) -> str | None:
    """Why a device's declared schema cannot feed this node's model (None when it can)."""
    if set(declared) != set(expected):
        return f"schema declares tensors {sorted(declared)} but this node takes {sorted(expected)}"
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

    def __init__(self, config: Config, frame_size: tuple[int, int]) -> None:
        self.config = config
        self.num_classes = config.model.num_classes
        self.frame_size = frame_size  # see node_frame_size: from the configuration or the stored buffer, never a device
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
        h, w = self.frame_size
        sizes = [lim["max_audio_frames"] * self.config.model.audio_features * 4,
                 lim["max_video_frames"] * self.config.model.visual_channels * h * w * 4]
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
            if problem is None and self.frame_size != image:
                problem = (f"raw media refused: its frames become features.image_size {image[0]}x{image[1]} but this node "
                           f"batches {self.frame_size[0]}x{self.frame_size[1]} frames (node.frame_size / its stored buffer)")
            if problem:
                return None, True, problem
            return self._raw_contract, True, None
        return None, False, problem + f"; or send raw media: {describe(RAW_SCHEMA)}; or declare {{}} to take the welcome's schema"

    def check(self, contract: InputContract, raw: bool, device: str,
              sample: Sample) -> tuple[validation.Problem | None, InputContract]:
        """The cheap part of the input contract (shapes, bounds, label, split); finiteness runs on the learner thread.

        Returns the problem (None: queue it) and the contract the device keeps (the one it was welcomed with).
        """
        shapes = {n: (_dtype_name(t.dtype), t.shape) for n, t in sample.tensors.items()}
        return contract.check_shapes(shapes) or validation.check_label_split(sample.label, sample.split, self.num_classes), contract
