"""The modalities of a configuration, resolved: each name with its kind, step size and bounds.

``Config.modalities`` declares them (docs/modalities.md); :func:`modalities_of` fills in what a
declaration leaves to other sections (the feature bins of an ``audio`` modality, the colour
channels of a ``frames`` one, the node's cost limits). Everything that depends on which tensors a
sample carries asks this module: the input contract (:mod:`edge_runtime.core.validation`), the
batch, the model's encoders, the ONNX export's input names, the federation arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_runtime.core.sample import TensorSpec

if TYPE_CHECKING:
    from edge_runtime.core.config import Config

#: Longest ``series`` sample (axis 0) when ``modalities.<name>.max_steps`` is not set.
DEFAULT_SERIES_STEPS = 4096
#: Largest magnitude of a modality's values when ``node.max_abs_value.<name>`` is not set.
DEFAULT_MAX_ABS = 1e4


@dataclass(frozen=True)
class Modality:
    """One resolved modality. ``channels`` is the size of one step (audio: feature bins; frames: colour
    channels; series: channels; vector: length); ``max_steps`` bounds axis 0 (None for a vector) and
    ``steps_key`` is the configuration key that sets it."""

    name: str
    kind: str
    channels: int
    max_steps: int | None
    steps_key: str | None

    @property
    def has_time(self) -> bool:
        """Whether axis 0 is time (every kind but ``vector``)."""
        return self.kind != "vector"

    def spec(self, frame_size: tuple[int, int] | None = None) -> TensorSpec:
        """The dtype and shape of this modality's tensor in one sample (-1: any size)."""
        if self.kind == "frames":
            h, w = frame_size if frame_size is not None else (-1, -1)
            return TensorSpec("float32", (-1, self.channels, h, w))
        if self.kind == "vector":
            return TensorSpec("float32", (self.channels,))
        return TensorSpec("float32", (-1, self.channels))

    def bounds(self, max_frame_size: int) -> tuple[tuple[int | None, ...], tuple[str | None, ...]]:
        """Per-axis upper bounds of the tensor and the configuration key that sets each."""
        if self.kind == "frames":
            return ((self.max_steps, None, max_frame_size, max_frame_size),
                    (self.steps_key, None, "node.max_frame_size", "node.max_frame_size"))
        if self.kind == "vector":
            return (None,), (None,)
        return (self.max_steps, None), (self.steps_key, None)


def modalities_of(config: "Config") -> dict[str, Modality]:
    """``name -> Modality`` in the configuration's order (the order of the model's inputs and outputs)."""
    out: dict[str, Modality] = {}
    nc, fc, mc = config.node, config.features, config.model
    for name, m in config.modalities.items():
        key = f"modalities.{name}.max_steps"
        if m.kind == "audio":
            channels = m.channels or mc.audio_features
            steps = m.max_steps or nc.max_audio_frames or fc.max_audio_frames
            key = key if m.max_steps else "node.max_audio_frames"
        elif m.kind == "frames":
            channels = m.channels or mc.visual_channels
            steps = m.max_steps or nc.max_video_frames or fc.max_video_frames
            key = key if m.max_steps else "node.max_video_frames"
        elif m.kind == "series":
            channels, steps = int(m.channels or 0), m.max_steps or DEFAULT_SERIES_STEPS
        else:
            channels, steps, key = int(m.channels or 0), None, None
        out[name] = Modality(name, m.kind, int(channels), steps, key)
    return out


def frames_modalities(config: "Config") -> list[str]:
    """Names of the ``frames`` modalities (their height and width are the node's one frame size)."""
    return [name for name, m in config.modalities.items() if m.kind == "frames"]


def max_abs_of(config: "Config") -> dict[str, float]:
    """Largest magnitude per float tensor (:data:`DEFAULT_MAX_ABS` for a modality not set in
    ``node.max_abs_value``); unbounded (None) entries are left out."""
    limits: dict[str, float | None] = {name: DEFAULT_MAX_ABS for name in config.modalities}
    limits.update(config.node.max_abs_value)
    return {name: float(v) for name, v in limits.items() if v is not None}
