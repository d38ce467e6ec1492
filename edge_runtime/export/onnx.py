"""ONNX export of the inference path, and onnxruntime sessions to run it (edge node and end devices).

The exported graph is the inference path of the model (the built-in
:class:`edge_runtime.learning.model.MultimodalNet`, or a model of ``model.builder``) in eval mode, with
one pair of inputs per modality of the configuration, in its order (docs/modalities.md):

* inputs ``<name>`` float32 and ``<name>_lengths`` (B,) int64 per modality: (B, T, C) for ``audio`` and
  ``series``, (B, T, C, H, W) for ``frames``, (B, C) for ``vector``; the batch ``B``, each time axis
  ``<name>_steps`` and the frame size ``height`` / ``width`` are dynamic;
* outputs ``logits`` and ``<name>_logits`` per modality, each (B, num_classes) float32.

The default configuration (``audio`` + ``video``) gives the inputs ``audio``, ``audio_lengths``,
``video``, ``video_lengths`` and the outputs ``logits``, ``audio_logits``, ``video_logits``
(:data:`INPUT_NAMES`, :data:`OUTPUT_NAMES`). The modalities come from the configuration given
(``config=``; a :class:`~edge_runtime.core.config.ModelConfig` alone, or none, means the default
audio + video); without one, those of a built-in model are read from its encoders.

Opset: :data:`DEFAULT_OPSET` (17), written by the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``).  The model exports correctly at opsets 13 to 20;
17 is the default because it is the newest opset TensorRT 8.6 (JetPack 6.0) parses, and
onnxruntime >= 1.13 runs it.  Every length must be in ``1 .. T`` of its padded axis (as the node's
batches are): the graph gathers each GRU's output at ``length - 1``.

:func:`make_session` builds an :class:`onnxruntime.InferenceSession` with the providers in the
order TensorRT, CUDA, CPU among those this onnxruntime build has (configurable), and
:func:`verify_onnx` rejects a corrupt or truncated model with a :class:`ValueError` before a
device swaps it in.  ``edge-node export`` (:mod:`edge_runtime.cli.export`) is :func:`read_checkpoint_file`,
:func:`model_from_checkpoint`, :func:`onnx_bytes`, :func:`verify_onnx` and :func:`difference_to_torch`, step by step.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from edge_runtime.core.atomic import atomic_write_bytes
from edge_runtime.core.config import Config, ModelConfig
from edge_runtime.core.modalities import Modality, modalities_of
from edge_runtime.export.opset import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from edge_runtime.learning.guard import NonFiniteState, describe_non_finite

if TYPE_CHECKING:  # onnxruntime is imported lazily: the node imports this module for onnx_bytes only
    import onnxruntime


#: Suffix of a modality's lengths input and of its own logits output.
LENGTHS, LOGITS = "_lengths", "_logits"
#: The fused logits output.
FUSED = "logits"


def input_names(modalities: Sequence[str]) -> tuple[str, ...]:
    """``(<name>, <name>_lengths)`` for each modality, in order: the exported model's inputs."""
    return tuple(n for name in modalities for n in (name, name + LENGTHS))


def output_names(modalities: Sequence[str]) -> tuple[str, ...]:
    """``logits`` then ``<name>_logits`` for each modality: the exported model's outputs."""
    return (FUSED, *(name + LOGITS for name in modalities))


def dynamic_axes(specs: Mapping[str, Modality]) -> dict[str, dict[int, str]]:
    """The dynamic axes of each input and output: the batch; the time axis ``<name>_steps`` of every kind but
    ``vector``; ``height`` / ``width`` of the (first) ``frames`` modality (``<name>_height`` of any other)."""
    axes: dict[str, dict[int, str]] = {}
    first_frames = True
    for name, m in specs.items():
        ax = {0: "batch"}
        if m.has_time:
            ax[1] = f"{name}_steps"
        if m.kind == "frames":
            h, w = ("height", "width") if first_frames else (f"{name}_height", f"{name}_width")
            ax.update({3: h, 4: w})
            first_frames = False
        axes[name] = ax
        axes[name + LENGTHS] = {0: "batch"}
    for out in output_names(list(specs)):
        axes[out] = {0: "batch"}
    return axes


#: The modalities of the default configuration (audio + video), and its model's inputs and outputs.
DEFAULT_MODALITIES = tuple(Config().modalities)
INPUT_NAMES = input_names(DEFAULT_MODALITIES)
OUTPUT_NAMES = output_names(DEFAULT_MODALITIES)

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
"""Default onnxruntime execution providers, most preferred first."""


class _InferencePath(nn.Module):
    """The model restricted to its logit outputs, fused then each modality's (the graph that is exported)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.modalities = tuple(model.modalities)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(*inputs)
        return (out.logits, *(out.unimodal[name] for name in self.modalities))


class _AdaptiveAvgPool2dMatmul(nn.Module):
    """``nn.AdaptiveAvgPool2d(out)`` written as two matrix products, for frames of any size in ONNX.

    The legacy exporter cannot export an adaptive pool to a size other than 1 when H and W are
    dynamic.  Window ``i`` of an axis of length ``n`` covers ``[floor(i n / out), ceil((i + 1) n / out))``,
    exactly as PyTorch's adaptive pool; ``P[i, j] = 1 / |window i|`` for ``j`` in window ``i``, and the
    result is ``P_h @ x @ P_w^T``.  Equal to the original up to float rounding (~1e-7).
    """

    def __init__(self, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.out_h, self.out_w = output_size

    @staticmethod
    def _matrix(n: int, out: int, like: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(n, device=like.device)
        i = torch.arange(out, device=like.device)
        start = torch.div(i * n, out, rounding_mode="floor")
        end = torch.div((i + 1) * n + out - 1, out, rounding_mode="floor")
        window = ((idx[None, :] >= start[:, None]) & (idx[None, :] < end[:, None])).to(like.dtype)
        return window / window.sum(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = self._matrix(x.shape[-2], self.out_h, x)  # (out_h, H)
        pw = self._matrix(x.shape[-1], self.out_w, x)  # (out_w, W)
        return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))


def _exportable(model: nn.Module) -> nn.Module:
    """Replace, in place, the modules the exporter cannot take with dynamic frame sizes by equivalents.

    Only adaptive average pools to a size other than 1x1 are replaced (1x1 exports as GlobalAveragePool).
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.AdaptiveAvgPool2d):
            continue
        size = module.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if None in size:
            raise ValueError(f"cannot export {name}: AdaptiveAvgPool2d with output size {module.output_size}")
        if size == (1, 1):
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, _AdaptiveAvgPool2dMatmul(size))
    return model



def _encoder_kinds() -> dict[str, str]:
    """Encoder class name -> modality kind (a built-in model's modalities read from its encoders)."""
    from edge_runtime.learning.model.encoders import REGISTRY

    return {target.rpartition(":")[2]: kind for kind, target in REGISTRY.items()}


def _first_layer_width(module: nn.Module) -> int:
    """Input width of the first convolution or linear layer of ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            return int(m.in_features)
    raise TypeError(f"cannot read the input width of {type(module).__name__}")


def _modalities_of_model(model: nn.Module) -> dict[str, Modality]:
    """The modalities of a built-in model, read from its encoders (kind by class, channels by first layer)."""
    names = tuple(getattr(model, "modalities", ()))
    encoders = getattr(model, "encoders", None)
    if not names or encoders is None:
        raise TypeError(f"expected an edge_runtime model (attributes modalities and encoders), got {type(model).__name__}; "
                        "give the configuration (config=) for a model of model.builder")
    out: dict[str, Modality] = {}
    for name in names:
        encoder = encoders[name]
        kind = _encoder_kinds().get(type(encoder).__name__)
        if kind is None:
            raise TypeError(f"cannot tell the kind of modality {name!r} from its encoder {type(encoder).__name__}; "
                            "give the configuration (config=)")
        out[name] = Modality(name, kind, _first_layer_width(encoder), None, None)
    return out


def model_modalities(model: nn.Module, config: Config | ModelConfig | None = None) -> dict[str, Modality]:
    """The modalities ``model`` takes, in its input order: from ``config`` (a :class:`Config`), else read from
    a built-in model's encoders. A :class:`ModelConfig` is the default audio + video configuration.

    Raises ``ValueError`` when the model's modality names differ from the configuration's.
    """
    names = list(getattr(model, "modalities", ()) or ())
    if isinstance(config, ModelConfig):
        config = Config(model=config)
    if config is None:
        return _modalities_of_model(model)
    specs = modalities_of(config)
    if names != list(specs):
        raise ValueError(f"the model takes the modalities {names} but the configuration declares {list(specs)}; "
                         "give the configuration the model was built with")
    return specs


def example_inputs(
    model: nn.Module, batch: int = 2, time_steps: int = 8, frame_steps: int = 3, image_size: int = 16, seed: int = 0,
    *, config: Config | ModelConfig | None = None,
) -> tuple[torch.Tensor, ...]:
    """A random padded batch that fits ``model``: ``(x_1, lengths_1, ..., x_N, lengths_N)`` in its modality order.

    ``time_steps`` is the padded length of every ``audio`` / ``series`` modality, ``frame_steps`` of every
    ``frames`` one (frames ``image_size`` square); a ``vector`` modality has no time axis (its lengths are
    its size). Lengths run from the full padded length down (at least 1), so the traced graph sees padding.
    """
    if batch < 1 or time_steps < 1 or frame_steps < 1 or image_size < 1:
        raise ValueError(f"example sizes must be >= 1 (batch={batch}, time_steps={time_steps}, "
                         f"frame_steps={frame_steps}, image_size={image_size})")
    gen = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    for m in model_modalities(model, config).values():
        if m.kind == "vector":
            x = torch.randn(batch, m.channels, generator=gen)
            lengths = torch.full((batch,), m.channels, dtype=torch.long)
        else:
            steps = frame_steps if m.kind == "frames" else time_steps
            tail = (m.channels, image_size, image_size) if m.kind == "frames" else (m.channels,)
            x = torch.randn(batch, steps, *tail, generator=gen)
            lengths = torch.tensor([max(1, steps - i) for i in range(batch)], dtype=torch.long)
        out += [x, lengths]
    return tuple(out)


def onnx_bytes(
    model: nn.Module, opset: int = DEFAULT_OPSET, batch: int = 2, time_steps: int = 8, frame_steps: int = 3,
    image_size: int = 16, *, config: Config | ModelConfig | None = None,
) -> bytes:
    """Export the inference path of ``model`` into memory and return the serialized ONNX model.

    The live ``model`` is not touched: a float32 CPU copy is put in eval mode, its adaptive pools
    rewritten for dynamic frame sizes (:func:`_exportable`), and traced on an example batch of the
    given sizes (the exported axes stay dynamic; see :func:`example_inputs`). ``config``: the configuration
    the model was built from (its modalities name the inputs and outputs; needed for a model of
    ``model.builder``; None: read from a built-in model).  Call it from the thread
    that trains the model, so the weights do not change while they are copied.

    Raises :class:`~edge_runtime.learning.guard.NonFiniteState` (a ``ValueError``) when a weight or
    buffer of ``model`` holds NaN/Inf: such a model is never exported nor published.
    """
    problem = describe_non_finite(model.state_dict())
    if problem is not None:
        raise NonFiniteState(f"model not exported: its weights hold {problem}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in {MIN_OPSET}..{MAX_OPSET} (got {opset}): the TorchScript ONNX exporter "
                         f"writes at most {MAX_OPSET}, and older opsets than {MIN_OPSET} cannot express this model")
    specs = model_modalities(model, config)
    inputs = example_inputs(model, batch, time_steps, frame_steps, image_size, config=config)
    names = list(specs)
    frozen = _exportable(copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval())
    for p in frozen.parameters():
        p.requires_grad_(False)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # Known, checked warnings of the legacy exporter: it is deprecated (the dynamo exporter needs
        # onnxscript); advanced indexing is wrong for negative indices (ours are clamped to >= 0);
        # GRUs traced at batch > 1 (the tests run other batch sizes against PyTorch).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        warnings.filterwarnings("ignore", message=".*advanced indexing.*")
        warnings.filterwarnings("ignore", message=".*variable length with GRU.*")
        # shape checks inside torch.nn (GRU hidden size, GroupNorm batch size) traced as constants
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.")
        torch.onnx.export(
            _InferencePath(frozen), inputs, buf, dynamo=False, opset_version=opset,
            input_names=list(input_names(names)), output_names=list(output_names(names)), dynamic_axes=dynamic_axes(specs),
            do_constant_folding=True,
        )
    return _with_every_input(buf.getvalue(), specs)


def _with_every_input(data: bytes, specs: Mapping[str, Modality]) -> bytes:
    """``data`` with every input of :func:`input_names`: the exporter drops an input the graph does not use
    (the lengths of a ``vector`` modality, or of a model that ignores them); it is put back, unused, so
    every exported model takes ``<name>`` and ``<name>_lengths`` for each modality."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load_model_from_string(data)
    have = {i.name: i for i in proto.graph.input}
    wanted = input_names(list(specs))
    if all(name in have for name in wanted):
        return data
    axes = dynamic_axes(specs)
    kept = [i for i in proto.graph.input if i.name not in wanted]  # (initializers listed as inputs, if any)
    rebuilt = []
    for name in wanted:
        if name in have:
            rebuilt.append(have[name])
            continue
        if name in specs:  # a modality's tensor the model ignores (unusual, but its input all the same)
            dims = ("batch", *specs[name].spec().shape)
            shape = [axes[name].get(i, None if d == -1 else d) for i, d in enumerate(dims)]
            rebuilt.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        else:
            rebuilt.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch"]))
    del proto.graph.input[:]
    proto.graph.input.extend(rebuilt + kept)
    return proto.SerializeToString()


def export_onnx(
    model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET, batch: int = 2, time_steps: int = 8,
    frame_steps: int = 3, image_size: int = 16, *, config: Config | ModelConfig | None = None,
) -> Path:
    """Export the inference path of ``model`` to ``path`` (written atomically) and return the path.

    See :func:`onnx_bytes` for the arguments; the file is checked with :func:`verify_onnx`.
    """
    data = onnx_bytes(model, opset, batch, time_steps, frame_steps, image_size, config=config)
    verify_onnx(data, list(model_modalities(model, config)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, data)


def _model_state(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The model state dict inside a node checkpoint (``{"learner": {"model": ...}}``) or a learner state."""
    if isinstance(checkpoint.get("learner"), dict) and "model" in checkpoint["learner"]:
        return checkpoint["learner"]["model"]
    if isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    raise ValueError(f"checkpoint {path} holds no model weights (keys: {sorted(checkpoint)}); "
                     "expected a node checkpoint with learner.model")


def read_checkpoint_file(checkpoint_path: str | Path) -> tuple[dict[str, Any], Path]:
    """A checkpoint and the file it came from: ``checkpoint_path`` itself, or the newest valid
    ``ckpt-*.pt`` of a folder (a state_dir or its ``checkpoints/``); :class:`CheckpointError` when there is none."""
    from edge_runtime.learning.checkpoint import CheckpointError, CheckpointManager, read_checkpoint

    path = Path(checkpoint_path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path  # a state_dir or its checkpoints/
        loaded = CheckpointManager(folder).load_latest()
        if loaded is None:
            raise CheckpointError(f"no checkpoint (ckpt-*.pt) in {folder}")
        return loaded
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return read_checkpoint(path), path


def model_from_checkpoint(checkpoint: dict[str, Any], path: Path, config: Config | ModelConfig) -> nn.Module:
    """The model of ``checkpoint`` (read from ``path``, named in errors), in eval mode on CPU; ValueError
    when its weights do not fit the model ``config`` describes."""
    from edge_runtime.learning.checkpoint import checkpoint_modalities, upgrade_model_state
    from edge_runtime.learning.model import build_model

    model = build_model(config)  # a Config: its modalities (and model.builder); a ModelConfig: the default audio + video
    state = _model_state(checkpoint, path)
    names = list(getattr(model, "modalities", ()))
    ours, theirs = checkpoint_modalities(model.state_dict()), checkpoint_modalities(upgrade_model_state(state, names))
    if ours == names and theirs is not None and theirs != ours:
        raise ValueError(f"checkpoint {path} was written for the modalities {theirs} but the configuration declares {ours}; "
                         "pass the configuration the node ran with (--config FILE)")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(
            f"checkpoint {path} does not fit the model configuration ({' '.join(s.strip() for s in first[:3])}); "
            "pass the configuration the node ran with (--config FILE, --set model.KEY=VALUE)") from None
    return model.eval()


def load_checkpoint_model(checkpoint_path: str | Path, config: Config | ModelConfig) -> nn.Module:
    """The model of a checkpoint file (or of the newest valid ``ckpt-*.pt`` in a folder), in eval mode on CPU.

    Checkpoints hold weights, not the model configuration: ``config`` must describe the model
    the node ran with (its ``--config`` and ``--set model.*`` overrides).
    """
    checkpoint, path = read_checkpoint_file(checkpoint_path)
    return model_from_checkpoint(checkpoint, path, config)


def export_checkpoint(
    checkpoint_path: str | Path, out_path: str | Path, config: Config | ModelConfig, opset: int = DEFAULT_OPSET
) -> Path:
    """Export the model of a node checkpoint (file, or folder of checkpoints) to ``out_path``; returns it."""
    return export_onnx(load_checkpoint_model(checkpoint_path, config), out_path, opset=opset,
                       config=config if isinstance(config, Config) else None)


# ---------------------------------------------------------------------------------------- runtime


def select_providers(
    available: Sequence[str], preferred: Sequence[str] | None = None, trt_fp16: bool = False,
    trt_cache_dir: str | Path | None = None,
) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for a session: ``preferred`` (default :data:`PROVIDER_ORDER`) in order, kept
    only where in ``available``; TensorRT gets its options as a ``(name, options)`` pair.

    Raises :class:`ValueError` when none of the preferred providers is available.
    """
    order = list(PROVIDER_ORDER if preferred is None else preferred)
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for name in order:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            options: dict[str, Any] = {"trt_fp16_enable": bool(trt_fp16)}
            if trt_cache_dir is not None:
                options["trt_engine_cache_enable"] = True
                options["trt_engine_cache_path"] = str(trt_cache_dir)
            chosen.append((name, options))
        else:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"none of the execution providers {order} is available in this onnxruntime "
                         f"(available: {list(available)})")
    return chosen


def make_session(
    path_or_bytes: str | Path | bytes, providers: list[str] | None = None, trt_fp16: bool = False,
    trt_cache_dir: str | None = None,
) -> "onnxruntime.InferenceSession":
    """An onnxruntime session for an exported model (a file path or the model's bytes).

    ``providers``: execution providers in order of preference (default TensorRT, CUDA, CPU); those
    this onnxruntime build lacks are left out.  ``trt_fp16`` lets TensorRT run in fp16;
    ``trt_cache_dir`` enables TensorRT's engine cache in that folder (created), so a restart does
    not rebuild the engines.
    """
    import onnxruntime as ort

    if trt_cache_dir is not None:
        Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
    chosen = select_providers(ort.get_available_providers(), providers, trt_fp16, trt_cache_dir)
    model = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    return ort.InferenceSession(model, providers=chosen)


def _as_array(x: Any, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def predict(session: "onnxruntime.InferenceSession", *args: Any) -> dict[str, np.ndarray]:
    """Run an exported model: arrays or tensors in, ``{"logits", "<name>_logits", ...}`` arrays out.

    ``predict(session, {"accel": x, "accel_lengths": n, ...})``: the inputs by name (the session's input
    names, :func:`input_names`); or ``predict(session, x_1, lengths_1, ..., x_N, lengths_N)`` in the
    session's input order. Lengths are fed as int64, everything else as float32.
    """
    inputs = session.get_inputs()
    if len(args) == 1 and isinstance(args[0], Mapping):
        given = dict(args[0])
    else:
        if len(args) != len(inputs):
            raise ValueError(f"the model takes {len(inputs)} inputs {[i.name for i in inputs]}, got {len(args)}")
        given = {i.name: x for i, x in zip(inputs, args)}
    wanted = [i.name for i in inputs]
    if set(given) != set(wanted):
        raise ValueError(f"the model takes the inputs {wanted}; given {sorted(given)}")
    feeds = {i.name: _as_array(given[i.name], np.int64 if "int64" in i.type else np.float32) for i in inputs}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def session_modalities(session: "onnxruntime.InferenceSession") -> list[str]:
    """The modality names of an exported model, in its input order (its inputs without ``_lengths``)."""
    return [i.name for i in session.get_inputs() if not i.name.endswith(LENGTHS)]


def verify_onnx(data: bytes, modalities: Sequence[str] | None = None) -> None:
    """Check that ``data`` is a loadable ONNX model with the exported inputs and outputs.

    The inputs must be ``<name>``, ``<name>_lengths`` per modality and the outputs include ``logits`` and
    ``<name>_logits`` for each; ``modalities`` (when given) are the names, in order, it must take.
    Raises :class:`ValueError` saying what is wrong (empty, not ONNX / truncated, fails the ONNX
    checker, cannot be loaded by onnxruntime, or has other inputs/outputs than an exported model).
    """
    import onnx
    import onnxruntime as ort

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"ONNX model must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ValueError("corrupt ONNX model: empty (0 bytes)")
    size = f"{len(data)} bytes"
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf DecodeError and friends
        raise ValueError(f"corrupt ONNX model ({size}): not a parsable ONNX protobuf, truncated or damaged "
                         f"({type(err).__name__}: {err})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ValueError(f"corrupt ONNX model ({size}): no graph (truncated or not an ONNX model)")
    try:
        onnx.checker.check_model(proto)
    except Exception as err:
        raise ValueError(f"corrupt ONNX model ({size}): fails the ONNX checker ({_first_line(err)})") from None
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ValueError(f"corrupt ONNX model ({size}): onnxruntime cannot load it ({_first_line(err)})") from None
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    names = list(modalities) if modalities is not None else inputs[::2]
    expected_in, expected_out = list(input_names(names)), list(output_names(names))
    if not names or inputs != expected_in or not set(expected_out) <= set(outputs):
        raise ValueError(f"not an edge-runtime model: inputs {inputs} (expected {expected_in}: <modality>, "
                         f"<modality>_lengths for each), outputs {outputs} (expected {expected_out})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def difference_to_torch(model: nn.Module, path: str | Path, config: Config | ModelConfig | None = None) -> float:
    """Largest absolute difference between the ONNX model at ``path`` (onnxruntime, CPU) and ``model``
    (PyTorch, eval mode) over every logit output, on a random batch of other sizes than the traced one."""
    session = make_session(path, providers=["CPUExecutionProvider"])
    specs = model_modalities(model, config)
    inputs = example_inputs(model, batch=3, time_steps=12, frame_steps=4, seed=1, config=config)
    got = predict(session, *inputs)
    with torch.no_grad():
        ref = _InferencePath(model)(*inputs)
    return max(float(np.abs(got[name] - r.numpy()).max()) for name, r in zip(output_names(list(specs)), ref))
