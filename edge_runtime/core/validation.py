"""The model's input contract: one validation layer, one set of reason codes.

The node checks every decoded sample against an :class:`InputContract` before it is queued, and
``Learner.check`` runs the same checks (built by :func:`model_contract`), so one fault has one
name in verdicts (``invalid:<code>``) and in ``edge_samples_invalid_total{reason}``.

A contract is a schema (tensor name -> dtype and shape, ``-1`` meaning "any size"), an upper bound
per axis (cost limits: audio frames, video frames, frame height and width), the number of classes,
and three rules every tensor obeys: no axis of length 0 (the model cannot encode an empty clip or a
0x0 frame), no NaN/Inf in floating-point data, and no floating-point value whose magnitude is over
the tensor's limit (``node.max_abs_value``: a finite 3e38 overflows the first layer and would turn
the weights into NaN/Inf). This module knows nothing about sockets or
msgpack; :mod:`edge_runtime.wire` checks the framing, this module the content.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from edge_runtime.core.modalities import max_abs_of, modalities_of
from edge_runtime.core.sample import TensorSpec

if TYPE_CHECKING:  # only for type hints: wire imports this module for its content checks
    from edge_runtime.core.config import Config
    from edge_runtime.core.sample import Sample

SPLITS = ("train", "eval")

#: Every content reason code, with what it means (docs/protocol.md's reason table lists the same).
REASONS: dict[str, str] = {
    "schema_mismatch": "tensor names, dtypes or shapes differ from the schema the device was welcomed with",
    "empty": "a tensor has an axis of length 0 (no audio frames, no video frames, a 0x0 frame)",
    "too_many_frames": "more time steps (axis 0) than the modality's bound (node.max_audio_frames, node.max_video_frames, "
                       "modalities.<name>.max_steps)",
    "frame_too_large": "frame height or width over node.max_frame_size (node.max_raw_frame_size for raw frames)",
    "nan_inf": "a floating-point tensor holds NaN or +-Inf",
    "value_too_large": "a floating-point tensor holds a value whose magnitude is over node.max_abs_value[<tensor>]",
    "non_finite_update": "learning from the sample made the model's outputs, the loss, a gradient, a weight or a prototype NaN/Inf; "
                         "the update was rolled back and the sample is not kept",
    "label_out_of_range": "label < 0 or >= model.num_classes",
    "bad_split": "split is not 'train' or 'eval'",
}


@dataclass(frozen=True)
class Problem:
    """Why a sample breaks the contract: a reason code of :data:`REASONS` and a message naming the fix."""

    code: str
    message: str

    @property
    def verdict(self) -> str:
        return f"invalid:{self.code}"


@dataclass(frozen=True)
class InputContract:
    """What a sample must look like to be learned from (see the module docstring).

    ``schema`` maps a tensor name to an object with ``dtype`` (a numpy name) and ``shape``
    (``-1``: free); ``max_shape`` maps a tensor name to per-axis upper bounds (``None``: no bound)
    and ``limit_keys`` to the config key named when a bound is broken; ``max_abs`` maps a tensor
    name to the largest magnitude its floating-point values may have (a name not in it: unbounded).
    """

    schema: Mapping[str, Any]
    num_classes: int | None = None
    max_shape: Mapping[str, tuple[int | None, ...]] = field(default_factory=dict)
    limit_keys: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)
    max_abs: Mapping[str, float] = field(default_factory=dict)

    def with_schema(self, schema: Mapping[str, Any]) -> "InputContract":
        """The same bounds over another schema (e.g. one with the frame size pinned)."""
        return replace(self, schema=dict(schema))

    def check_shapes(self, shapes: Mapping[str, tuple[str, Sequence[int]]]) -> Problem | None:
        """Names, dtypes, shapes and bounds of ``{name: (dtype, shape)}``; cheap, no tensor data read."""
        return self.check_schema(shapes) or self.check_bounds(shapes)

    def check_schema(self, shapes: Mapping[str, tuple[str, Sequence[int]]]) -> Problem | None:
        """``schema_mismatch`` when names, dtypes, ranks or fixed sizes differ from the schema."""
        schema = self.schema
        if set(shapes) != set(schema):
            return Problem("schema_mismatch", f"sample tensors {sorted(shapes)} differ from the schema {sorted(schema)}; "
                                              "send every tensor of the welcome's schema and no other")
        for name, (dtype, shape) in shapes.items():
            spec = schema[name]
            want = tuple(spec.shape)
            if dtype != spec.dtype or len(shape) != len(want) or any(w != -1 and w != s for w, s in zip(want, shape)):
                return Problem("schema_mismatch", f"tensor {name!r} is {dtype} {list(shape)} but the schema says "
                                                  f"{spec.dtype} {list(want)} (-1: any size)")
        return None

    def check_bounds(self, shapes: Mapping[str, tuple[str, Sequence[int]]]) -> Problem | None:
        """``empty`` (an axis of length 0), ``too_many_frames`` / ``frame_too_large`` (over a cost limit)."""
        for name, (_dtype, shape) in shapes.items():
            if 0 in shape:
                return Problem("empty", f"tensor {name!r} has shape {list(shape)}: an axis of length 0; "
                                        "send at least one frame of at least 1x1")
            bounds = self.max_shape.get(name)
            if bounds:
                keys = self.limit_keys.get(name, ())
                for axis, (size, top) in enumerate(zip(shape, bounds)):
                    if top is not None and size > top:
                        key = keys[axis] if axis < len(keys) and keys[axis] else "the node's limits"
                        code = "too_many_frames" if axis == 0 else "frame_too_large"
                        return Problem(code, f"tensor {name!r} has shape {list(shape)}: axis {axis} is {size}, over "
                                             f"{key} = {top}; send shorter clips or smaller frames")
        return None

    def check(self, sample: "Sample") -> Problem | None:
        """Every rule of the contract for one decoded sample (None: it may be learned from)."""
        problem = self.check_shapes({n: (np.asarray(t).dtype.name, np.shape(t)) for n, t in sample.tensors.items()})
        if problem is None:
            problem = check_finite(sample.tensors, self.max_abs)
        if problem is None:
            problem = check_label_split(sample.label, sample.split, self.num_classes)
        return problem


def check_finite(tensors: Mapping[str, np.ndarray], max_abs: Mapping[str, float] | None = None) -> Problem | None:
    """``nan_inf`` when a floating-point tensor holds NaN or +-Inf; ``value_too_large`` when one of
    its values has a magnitude over ``max_abs[name]`` (a name not in ``max_abs``: unbounded).

    One vectorised pass per tensor: its min and max (NaN propagates into both, an Inf is one of
    them), so the magnitude check costs nothing more than the finiteness scan. Integer tensors are
    bounded by their dtype and not scanned.
    """
    limits = max_abs or {}
    for name, arr in tensors.items():
        a = np.asarray(arr)
        if a.dtype.kind not in "fc" or a.size == 0:
            continue
        if a.dtype.kind == "c":  # complex: no order, so |x| itself
            if not np.isfinite(a).all():
                return _non_finite(name)
            top = float(np.abs(a).max())
        else:
            lo, hi = a.min(), a.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):
                return _non_finite(name)
            top = max(-float(lo), float(hi))
        limit = limits.get(name)
        if limit is not None and top > limit:
            return Problem("value_too_large", f"tensor {name!r} holds a value of magnitude {top:.3g}, over "
                                              f"node.max_abs_value.{name} = {limit:g}; normalise or clip the values "
                                              f"before sending (or raise node.max_abs_value.{name} on the node)")
    return None


def _non_finite(name: str) -> Problem:
    return Problem("nan_inf", f"tensor {name!r} holds NaN or Inf; clean the features before sending")


def check_label_split(label: Any, split: Any, num_classes: int | None) -> Problem | None:
    """``bad_split`` / ``label_out_of_range`` (labels are ints or None)."""
    if split not in SPLITS:
        return Problem("bad_split", f"split {split!r} is not one of {SPLITS}")
    if label is not None and (label < 0 or (num_classes is not None and label >= num_classes)):
        top = "" if num_classes is None else f" < {num_classes}"
        return Problem("label_out_of_range", f"label {label} is out of range (must be 0 <= label{top})")
    return None


# ---------------------------------------------------------------------------------------------
# The contracts of this code base's model
# ---------------------------------------------------------------------------------------------


def feature_schema(config: "Config", frame_size: tuple[int, int] | None = None) -> dict[str, TensorSpec]:
    """The tensors the model takes, one per modality of the configuration (docs/modalities.md); the
    height and width of ``frames`` modalities fixed when ``frame_size`` pins them."""
    return {name: m.spec(frame_size) for name, m in modalities_of(config).items()}


def raw_schema() -> dict[str, TensorSpec]:
    """What a device sending ``--send raw`` declares: a mono waveform and RGB uint8 frames (T, H, W, 3)."""
    return {"waveform": TensorSpec("float32", (-1,)), "frames": TensorSpec("uint8", (-1, -1, -1, 3))}


def limits_of(config: "Config") -> dict[str, int]:
    """The node's cost limits with their defaults from ``features`` filled in."""
    nc, fc = config.node, config.features
    return {
        "max_audio_frames": nc.max_audio_frames or fc.max_audio_frames,
        "max_video_frames": nc.max_video_frames or fc.max_video_frames,
        "max_frame_size": nc.max_frame_size or fc.image_size,
        "max_waveform_samples": int(nc.max_waveform_seconds * fc.sample_rate),
        "max_raw_frames": nc.max_raw_frames,
        "max_raw_frame_size": nc.max_raw_frame_size,
    }


def model_contract(config: "Config", frame_size: tuple[int, int] | None = None, *, bounded: bool = True) -> InputContract:
    """The contract of feature samples (``bounded=False``: without the node's cost limits, as the learner uses it)."""
    max_shape: dict[str, tuple[int | None, ...]] = {}
    keys: dict[str, tuple[str | None, ...]] = {}
    if bounded:
        size = limits_of(config)["max_frame_size"]
        for name, m in modalities_of(config).items():
            max_shape[name], keys[name] = m.bounds(size)
    return InputContract(feature_schema(config, frame_size), config.model.num_classes, max_shape, keys, max_abs_of(config))


def raw_contract(config: "Config") -> InputContract:
    """The contract of raw-media samples (the learner thread turns them into features)."""
    lim = limits_of(config)
    s = lim["max_raw_frame_size"]
    return InputContract(raw_schema(), config.model.num_classes,
                         {"waveform": (lim["max_waveform_samples"],), "frames": (lim["max_raw_frames"], s, s, None)},
                         {"waveform": ("node.max_waveform_seconds",),
                          "frames": ("node.max_raw_frames", "node.max_raw_frame_size", "node.max_raw_frame_size", None)},
                         max_abs_of(config))
