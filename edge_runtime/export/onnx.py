"""ONNX export of the inference path, and onnxruntime sessions to run it (edge node and end devices).

The exported graph is the inference path of :class:`edge_runtime.learning.model.MultimodalNet` in eval mode:

* inputs ``audio`` (B, T_a, F) float32, ``audio_lengths`` (B,) int64, ``video`` (B, T_v, C, H, W)
  float32, ``video_lengths`` (B,) int64; the batch ``B``, both time axes ``T_a`` / ``T_v`` and the
  frame size ``H`` / ``W`` are dynamic;
* outputs ``logits``, ``audio_logits``, ``video_logits``, each (B, num_classes) float32.

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
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from edge_runtime.core.atomic import atomic_write_bytes
from edge_runtime.core.config import Config, ModelConfig
from edge_runtime.export.opset import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from edge_runtime.learning.guard import NonFiniteState, describe_non_finite

if TYPE_CHECKING:  # onnxruntime is imported lazily: the node imports this module for onnx_bytes only
    import onnxruntime


INPUT_NAMES = ("audio", "audio_lengths", "video", "video_lengths")
OUTPUT_NAMES = ("logits", "audio_logits", "video_logits")
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "audio": {0: "batch", 1: "audio_steps"},
    "audio_lengths": {0: "batch"},
    "video": {0: "batch", 1: "video_steps", 3: "height", 4: "width"},
    "video_lengths": {0: "batch"},
    "logits": {0: "batch"},
    "audio_logits": {0: "batch"},
    "video_logits": {0: "batch"},
}

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
"""Default onnxruntime execution providers, most preferred first."""


class _InferencePath(nn.Module):
    """``MultimodalNet`` restricted to the three logit outputs (the graph that is exported)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, audio: torch.Tensor, audio_lengths: torch.Tensor, video: torch.Tensor, video_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(audio, audio_lengths, video, video_lengths)
        return out.logits, out.audio_logits, out.video_logits


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


def _input_shape(model: nn.Module) -> tuple[int, int]:
    """(audio feature bins, frame colour channels) the model takes, read from its first layers."""
    try:
        features = int(model.audio.conv1.in_channels)
        first_conv = next(m for m in model.visual.cnn.modules() if isinstance(m, nn.Conv2d))
    except (AttributeError, StopIteration):
        raise TypeError(f"expected an edge_runtime MultimodalNet, got {type(model).__name__}") from None
    return features, int(first_conv.in_channels)


def example_inputs(
    model: nn.Module, batch: int = 2, audio_steps: int = 8, video_steps: int = 3, image_size: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random padded batch that fits ``model``: (audio, audio_lengths, video, video_lengths).

    Lengths run from the full padded length down (at least 1), so the traced graph sees padding.
    """
    if batch < 1 or audio_steps < 1 or video_steps < 1 or image_size < 1:
        raise ValueError(f"example sizes must be >= 1 (batch={batch}, audio_steps={audio_steps}, "
                         f"video_steps={video_steps}, image_size={image_size})")
    features, channels = _input_shape(model)
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, audio_steps, features, generator=gen)
    video = torch.randn(batch, video_steps, channels, image_size, image_size, generator=gen)
    audio_lengths = torch.tensor([max(1, audio_steps - i) for i in range(batch)], dtype=torch.long)
    video_lengths = torch.tensor([max(1, video_steps - i) for i in range(batch)], dtype=torch.long)
    return audio, audio_lengths, video, video_lengths


def onnx_bytes(
    model: nn.Module, opset: int = DEFAULT_OPSET, batch: int = 2, audio_steps: int = 8, video_steps: int = 3,
    image_size: int = 16,
) -> bytes:
    """Export the inference path of ``model`` into memory and return the serialized ONNX model.

    The live ``model`` is not touched: a float32 CPU copy is put in eval mode, its adaptive pools
    rewritten for dynamic frame sizes (:func:`_exportable`), and traced on an example batch of the
    given sizes (the exported axes stay dynamic).  Call it from the thread
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
    inputs = example_inputs(model, batch, audio_steps, video_steps, image_size)
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
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), dynamic_axes=DYNAMIC_AXES,
            do_constant_folding=True,
        )
    return buf.getvalue()


def export_onnx(
    model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET, batch: int = 2, audio_steps: int = 8,
    video_steps: int = 3, image_size: int = 16,
) -> Path:
    """Export the inference path of ``model`` to ``path`` (written atomically) and return the path.

    See :func:`onnx_bytes` for the arguments; the file is checked with :func:`verify_onnx`.
    """
    data = onnx_bytes(model, opset, batch, audio_steps, video_steps, image_size)
    verify_onnx(data)
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
    from edge_runtime.learning.model import build_model

    model_cfg = config.model if isinstance(config, Config) else config
    model = build_model(model_cfg)
    try:
        model.load_state_dict(_model_state(checkpoint, path))
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
    return export_onnx(load_checkpoint_model(checkpoint_path, config), out_path, opset=opset)


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


def predict(
    session: "onnxruntime.InferenceSession", audio: Any, audio_lengths: Any, video: Any, video_lengths: Any
) -> dict[str, np.ndarray]:
    """Run an exported model: arrays or tensors in, ``{"logits", "audio_logits", "video_logits"}`` arrays out."""
    feeds = {
        "audio": _as_array(audio, np.float32),
        "audio_lengths": _as_array(audio_lengths, np.int64),
        "video": _as_array(video, np.float32),
        "video_lengths": _as_array(video_lengths, np.int64),
    }
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def verify_onnx(data: bytes) -> None:
    """Check that ``data`` is a loadable ONNX model with the exported inputs and outputs.

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
    if inputs != list(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
        raise ValueError(f"not an edge-runtime model: inputs {inputs} (expected {list(INPUT_NAMES)}), "
                         f"outputs {outputs} (expected {list(OUTPUT_NAMES)})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def difference_to_torch(model: nn.Module, path: str | Path) -> float:
    """Largest absolute difference between the ONNX model at ``path`` (onnxruntime, CPU) and ``model``
    (PyTorch) over the three logit outputs, on a random batch of other sizes than the traced one."""
    session = make_session(path, providers=["CPUExecutionProvider"])
    inputs = example_inputs(model, batch=3, audio_steps=12, video_steps=4, seed=1)
    got = predict(session, *inputs)
    with torch.no_grad():
        ref = _InferencePath(model)(*inputs)
    return max(float(np.abs(got[name] - r.numpy()).max()) for name, r in zip(OUTPUT_NAMES, ref))
