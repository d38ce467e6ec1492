"""The multimodal network: one encoder per named modality (by its kind) and a fusion head.

The model interface (docs/modalities.md), which the built-in :class:`MultimodalNet` and a model of
your own (``model.builder``) both implement:

* attribute ``modalities``: the modality names, in the configuration's order;
* attribute ``embed_dims``: ``name -> size of that modality's embedding``;
* ``forward(x_1, lengths_1, x_2, lengths_2, ...)``: each modality's padded batch and its valid lengths
  (B,) int64, in that order -> :class:`ModelOutput`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

import torch
from torch import nn

from edge_runtime.core.config import Config, ModelConfig
from edge_runtime.core.modalities import Modality, modalities_of
from edge_runtime.learning.model.encoders import build_encoder
from edge_runtime.learning.model.fusion import build_fusion

if TYPE_CHECKING:
    pass


class ModelOutput(NamedTuple):
    """Outputs of a model's ``forward``, all with the batch as first axis.

    logits: (B, num_classes) fused; unimodal: ``name -> (B, num_classes)``, one modality's own logits;
    z: ``name -> (B, d_name)``, one modality's embedding.  Both maps follow the model's modality order.
    """

    logits: torch.Tensor
    unimodal: dict[str, torch.Tensor]
    z: dict[str, torch.Tensor]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ModelOutput":
        """The same outputs with ``fn`` applied to every tensor (a slice, ``detach``, ``float``)."""
        return ModelOutput(fn(self.logits), {k: fn(v) for k, v in self.unimodal.items()}, {k: fn(v) for k, v in self.z.items()})

    def tensors(self) -> list[torch.Tensor]:
        """Every output tensor: logits, then the unimodal logits, then the embeddings."""
        return [self.logits, *self.unimodal.values(), *self.z.values()]

    @staticmethod
    def cat(parts: list["ModelOutput"]) -> "ModelOutput":
        """Outputs of consecutive row chunks joined along the batch axis."""
        first = parts[0]
        return ModelOutput(torch.cat([p.logits for p in parts]),
                           {k: torch.cat([p.unimodal[k] for p in parts]) for k in first.unimodal},
                           {k: torch.cat([p.z[k] for p in parts]) for k in first.z})


#: State-dict keys of the audio-visual model before modalities were named (an older checkpoint)
#: -> their names now.  Applied when such a checkpoint is loaded into a model with those modalities.
_LEGACY_PREFIXES = (("audio.", "encoders.audio."), ("visual.", "encoders.video."),
                    ("fusion.audio_head.", "fusion.heads.audio."), ("fusion.video_head.", "fusion.heads.video."))


class MultimodalNet(nn.Module):
    """One encoder per modality (``encoders[name]``, by its kind) + fusion head (``model.fusion``)."""

    def __init__(self, cfg: ModelConfig, modalities: Mapping[str, Modality]) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.embed_dim = cfg.embed_dim
        self.modalities = tuple(modalities)
        self.embed_dims = {name: cfg.embed_dim for name in self.modalities}
        self.encoders = nn.ModuleDict({name: build_encoder(m, cfg) for name, m in modalities.items()})
        self.fusion = build_fusion(cfg.fusion, self.modalities, cfg.embed_dim, cfg.num_classes)
        self._register_load_state_dict_pre_hook(self._rename_legacy_keys)

    def forward(self, *inputs: torch.Tensor) -> ModelOutput:
        """``(x_1, lengths_1, ..., x_N, lengths_N)`` in :attr:`modalities` order -> :class:`ModelOutput`."""
        if len(inputs) != 2 * len(self.modalities):
            raise TypeError(f"forward takes (x, lengths) for each of {list(self.modalities)}: {2 * len(self.modalities)} "
                            f"tensors, got {len(inputs)}")
        z = {name: self.encoders[name](inputs[2 * i], inputs[2 * i + 1]) for i, name in enumerate(self.modalities)}
        logits, unimodal = self.fusion(z)
        return ModelOutput(logits, unimodal, z)

    def _rename_legacy_keys(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if self.modalities != ("audio", "video"):
            return
        for key in list(state_dict):
            rest = key[len(prefix):] if key.startswith(prefix) else None
            for old, new in _LEGACY_PREFIXES:
                if rest is not None and rest.startswith(old):
                    state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                    break


def _default_modalities(cfg: ModelConfig) -> dict[str, Modality]:
    """The audio + video modalities of a model configuration alone (without a whole :class:`Config`)."""
    return modalities_of(Config(model=cfg))


def build_model(config: Config | ModelConfig) -> nn.Module:
    """The model of ``config``: ``model.builder``'s, or a :class:`MultimodalNet` over ``config.modalities``.

    A :class:`ModelConfig` alone builds the built-in model over the default audio + video modalities.
    """
    if isinstance(config, ModelConfig):
        return MultimodalNet(config, _default_modalities(config))
    if config.model.builder:
        return _user_model(config)
    return MultimodalNet(config.model, modalities_of(config))


def _user_model(config: Config) -> nn.Module:
    """``model.builder``'s model, checked against the interface (see the module docstring)."""
    spec = config.model.builder or ""
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model.builder: cannot load {spec!r} ({err}); it must name an importable module and a function in it") from None
    model = fn(config)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.builder: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    names = tuple(getattr(model, "modalities", ()))
    if names != tuple(config.modalities):
        raise ValueError(f"model.builder: {spec}'s model has modalities {list(names)} but the configuration declares "
                         f"{list(config.modalities)}; set model.modalities to the configuration's names, in its order")
    dims = getattr(model, "embed_dims", None)
    if not isinstance(dims, Mapping) or set(dims) != set(names):
        raise ValueError(f"model.builder: {spec}'s model needs embed_dims, a mapping of each modality name to its embedding size")
    return model
