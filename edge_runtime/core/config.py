"""Every setting of edge-runtime as pydantic models.

YAML files in ``configs/`` load into :class:`Config`.  Unknown keys and out-of-range values
are rejected with a :class:`ConfigError` whose message names the dotted key, the offending
value and what is allowed, e.g. ``selection.keep_ratio: must be <= 1 (got 1.5)``.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator, model_validator

from edge_runtime.core.policy_settings import ReplaySettings, SelectionSettings, parse_settings


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    """Encoders and fusion of :class:`edge_runtime.learning.model.MultimodalNet`, or a model of your own (``builder``)."""

    num_classes: int = Field(10, ge=2, le=100_000)
    audio_features: int = Field(13, ge=1, description="feature bins per audio frame (MFCC or mel)")
    audio_channels: int = Field(64, ge=1, description="channels of the audio conv front-end")
    visual_backbone: Literal["tiny", "mobilenet_v2"] = "tiny"
    visual_channels: int = Field(1, ge=1, le=4, description="colour channels of a frame")
    mobilenet_width: float = Field(1.0, gt=0.0, le=2.0, description="MobileNetV2 width multiplier")
    tiny_channels: int = Field(16, ge=1, description="width of the tiny per-frame CNN")
    series_channels: int = Field(32, ge=1, description="width of the series encoder's conv front-end (and the vector encoder's MLP)")
    embed_dim: int = Field(64, ge=2, description="size of each modality's embedding z_m")
    fusion: Literal["sum", "concat", "film", "gated"] = "sum"
    builder: str | None = Field(
        None, description="bring your own model: 'package.module:function' called as function(config) -> nn.Module "
                          "(docs/modalities.md, the model interface); null: the built-in encoders and fusion")

    @field_validator("builder")
    @classmethod
    def _builder(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"must be 'package.module:function' (got {value!r})")
        return value


#: The kinds of modality a configuration may declare (docs/modalities.md): what a sample's tensor of that
#: modality looks like and which encoder the built-in model gives it.
#: Most modalities one configuration may declare (inputs of the exported model, federation arrays, labels).
MAX_MODALITIES = 8  # a sample carries at most wire Limits.max_tensors (8) tensors
MODALITY_KINDS = ("audio", "frames", "series", "vector")
_MODALITY_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_RESERVED_NAMES = ("logits", "label", "labels", "device", "split", "time", "waveform", "frames")


class ModalityConfig(_Section):
    """One named modality: its kind and the size of what one time step of it carries.

    * ``audio``: (T, F) float32 feature frames (MFCC or log-mel); ``channels`` = F (null: model.audio_features);
    * ``frames``: (T, C, H, W) float32 image frames; ``channels`` = C (null: model.visual_channels);
    * ``series``: (T, C) float32 multichannel time series (an IMU, a radar range profile); ``channels`` = C (required);
    * ``vector``: (C,) float32 fixed-length feature vector; ``channels`` = C (required).
    """

    kind: Literal["audio", "frames", "series", "vector"]
    channels: int | None = Field(None, ge=1, le=1_000_000, description="size of one time step (see the kinds above)")
    max_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="longest sample (axis 0); over it a sample is invalid:too_many_frames "
                                               "(null: node.max_audio_frames / node.max_video_frames for audio / frames, 4096 for series)")

    @model_validator(mode="after")
    def _channels_required(self) -> "ModalityConfig":
        if self.kind in ("series", "vector") and self.channels is None:
            raise ValueError(f"channels: a {self.kind} modality needs its channel count (e.g. channels: 3 for a 3-axis IMU)")
        if self.kind == "vector" and self.max_steps is not None:
            raise ValueError("max_steps: a vector modality has no time axis; remove max_steps")
        return self


def _default_modalities() -> dict[str, ModalityConfig]:
    return {"audio": ModalityConfig(kind="audio"), "video": ModalityConfig(kind="frames")}


class FeatureConfig(_Section):
    """How raw audio and frames become the tensors the model sees (shared by device and node)."""

    sample_rate: int = Field(16000, ge=1000, description="audio is resampled to this rate (Hz)")
    audio: Literal["mfcc", "logmel"] = Field("mfcc", description="audio feature kind")
    n_mfcc: int = Field(13, ge=1, description="MFCC coefficients per frame (audio='mfcc')")
    n_mels: int = Field(40, ge=1, description="mel bands (audio='logmel'; also the MFCC filterbank)")
    win_ms: float = Field(25.0, gt=0.0, description="analysis window length (ms)")
    hop_ms: float = Field(10.0, gt=0.0, description="hop between audio frames (ms)")
    max_audio_frames: int = Field(300, ge=1, description="longer clips are truncated to their first frames")
    image_size: int = Field(32, ge=1, description="frames are resized to image_size x image_size")
    channels: Literal[1, 3] = Field(1, description="1: grayscale (luminance), 3: RGB")
    max_video_frames: int = Field(8, ge=1, description="at most this many evenly spaced frames are kept")

    @property
    def audio_dim(self) -> int:
        """Feature bins per audio frame: ``n_mfcc`` for MFCC, ``n_mels`` for log-mel."""
        return self.n_mfcc if self.audio == "mfcc" else self.n_mels


class PrototypeConfig(_Section):
    """EMA class prototypes per modality (the learning step, step 2 (docs/design.md))."""

    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="a in c <- a*c + (1-a)*z")
    confidence: Literal["prototype", "linear"] = "prototype"


class BufferConfig(_Section):
    """Bounded replay buffer (the learning step, steps 5-6 (docs/design.md))."""

    max_items: int = Field(200, ge=1)
    max_bytes: int = Field(64 * 2**20, ge=1, description="upper bound on stored tensor bytes")
    retention: Literal["reservoir", "class_balanced", "mbs"] = "class_balanced"
    replay_batch_size: int = Field(32, ge=0, description="replayed samples per update; 0 disables replay")


class TrainingConfig(_Section):
    """Losses, optimiser and teacher snapshot policy (the learning step, steps 5-6 (docs/design.md))."""

    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(5.0, gt=0.0)
    asymmetric_ce: bool = Field(True, description="ER-ACE: incoming CE restricted to the batch's classes")
    unimodal_loss_weight: float = Field(0.0, ge=0.0, description="extra CE on the unimodal heads")
    kd_lambda: float = Field(1.0, ge=0.0, description="weight of the KD term on replay")
    kd_temperature: float = Field(2.0, gt=0.0)
    teacher_every: int | None = Field(200, ge=1, description="refresh the teacher every N updates (None: never)")
    teacher_on_new_class: bool = True
    replay_steps: int = Field(1, ge=1, le=64, description="optimiser steps per micro-batch")
    fuse_forward: bool = Field(True, description="one forward for the incoming and replayed rows of an update (exact for models "
                                                 "without batch statistics, like the built-in one; turn off for a model with BatchNorm)")
    amp: Literal["off", "auto", "bf16", "fp16"] = Field(
        "off", description="mixed precision on CUDA (auto: bf16 where supported, else fp16); CPU always runs float32")
    teacher_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="precision of the frozen KD teacher (half precision halves its memory on a GPU)")
    seed: int = 0


class CurveConfig(_Section):
    """CurveZMQ encryption and authentication of devices (``edge-node keys DIR`` makes the files)."""

    enabled: bool = False
    server_secret_key: str | None = Field(None, description="the node's secret certificate (server.key_secret)")
    allowed_keys_dir: str | None = Field(None, description="folder of device public certificates (*.key) allowed to connect")
    reload_s: float = Field(2.0, gt=0.0, description="allowed_keys_dir is re-read this often: a removed key opens no new connection after it")
    # Hostile fleet bounds (issue 24)
    max_ids_per_key: int = Field(
        64, ge=1, le=1_000_000, description="device ids one key may hold bound at once; a hello for one more is refused (too_many_ids)")


class NodeConfig(_Section):
    """The ``edge-node run`` daemon: socket, flow control, micro-batching, durability, metrics."""

    bind: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint of the ROUTER socket")
    state_dir: str = Field("edge-state", description="SQLite store, ledger and checkpoints live here")
    credit: int = Field(32, ge=1, le=4096, description="per-device window of unacknowledged samples")
    queue_max: int = Field(1024, ge=1, description="samples waiting for the learner (bounded ingest queue)")
    batch_size: int = Field(32, ge=1, description="micro-batch size handed to the learner")
    batch_window_ms: float = Field(50.0, ge=0.0, description="learn a smaller batch when it has waited this long")
    max_message_bytes: int = Field(16 * 2**20, ge=1024, description="MAXMSGSIZE of the socket and the wire limit")
    heartbeat_ivl_ms: int = Field(1000, ge=0, description="ZMTP heartbeat interval (0: off)")
    heartbeat_timeout_ms: int = Field(5000, ge=0)
    checkpoint_every_s: float = Field(30.0, gt=0.0, description="seconds between periodic checkpoints")
    checkpoint_keep: int = Field(3, ge=1, description="checkpoints kept (the newest valid one is restored)")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL", description="NORMAL survives a crash of the process; FULL also a power loss (slower)")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus endpoint port (None: off, 0: any free port)")
    metrics_host: str = "127.0.0.1"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: text lines on a terminal, JSON lines otherwise (a file, a pipe, journald)")
    curve: CurveConfig = CurveConfig()
    model_bind: str | None = Field(None, description="PUB endpoint for ONNX models to devices, e.g. tcp://127.0.0.1:5556 (None: off)")
    model_every: int = Field(50, ge=1, description="publish a new model version every N learner updates")
    model_resend_s: float = Field(2.0, gt=0.0, description="re-send the newest model this often, for late subscribers")
    status_every_s: float = Field(1.0, gt=0.0, description="rewrite state_dir/status.json (what edge-node status reads) this often")
    history_every_s: float | None = Field(
        10.0, gt=0.0, description="append a row to state_dir/history.csv (what edge-node report plots) this often (None: off)")
    # Bounded cost per sample (None: the matching features.* value)
    max_audio_frames: int | None = Field(None, ge=1, description="audio frames (axis 0) per sample (None: features.max_audio_frames)")
    max_video_frames: int | None = Field(None, ge=1, description="video frames (axis 0) per sample (None: features.max_video_frames)")
    max_frame_size: int | None = Field(None, ge=1, description="largest frame height and width (None: features.image_size)")
    frame_size: tuple[int, int] | None = Field(
        None, description="[height, width] every feature frame must have (None: the stored buffer's, else features.image_size)")
    max_waveform_seconds: float = Field(30.0, gt=0.0, description="raw media: longest waveform, at features.sample_rate")
    max_raw_frames: int = Field(300, ge=1, description="raw media: most frames per sample")
    max_raw_frame_size: int = Field(1920, ge=1, description="raw media: largest frame height and width")
    queue_max_bytes: int = Field(256 * 2**20, ge=1024, description="bytes of samples waiting for the learner (with queue_max)")
    # Bounded state
    max_seq_gap: int = Field(4096, ge=1, description="a seq this far above the device's first undecided seq is refused (seq_gap)")
    device_idle_s: float = Field(600.0, gt=0.0, description="per-device state is freed after this long without a message (and on bye)")
    ledger_retention: int = Field(10_000, ge=0, description="verdict rows kept per device below its next_seq (older ones are compacted)")
    evictions_keep: int = Field(10_000, ge=0, description="rows of the buffer's evictions log kept (the newest)")
    router_handover: bool = Field(
        False, description="ZMQ_ROUTER_HANDOVER: a new connection takes a routing id from a live one (see docs/operations.md, device identity)")
    # Disk and metrics (issue 24 G7, G13)
    disk_retry_max_s: float = Field(
        30.0, ge=0.01, le=3600.0, description="a failing write to state_dir (full disk) is retried with backoff, at most this long apart")
    metrics_timeout_s: float = Field(
        5.0, gt=0.0, le=300.0, description="/metrics: a connection silent this long (e.g. an unfinished request) is closed")
    metrics_max_connections: int = Field(
        8, ge=1, le=1024, description="/metrics: connections served at once (one thread each); more are closed at once")
    # Hostile fleet bounds (issue 24)
    max_connections: int = Field(
        512, ge=1, le=1_000_000, description="open device connections; one more is answered too_many_connections and closed "
                                             "(also kept 64 under the process's descriptor limit)")
    hello_log_per_s: int = Field(20, ge=0, description="hello lines logged per second; the rest are counted in one line a second")
    # Numeric safety (issue 24 G2)
    # Real features stay far below these: audio is normalised per feature over its frames (|z| <= sqrt(frames),
    # 17.3 at 300 frames), video frames are [0, 1] pixels normalised by ImageNet constants (|x| <= 2.7), a waveform
    # is in [-1, 1] (int16-scaled floats: 32768). A finite 3e38 overflows the first layer.
    max_abs_value: dict[str, float | None] = Field(
        {"waveform": 1e5},
        description="largest magnitude of a float value per tensor: a modality's name (default 1e4 for every modality), "
                    "or waveform for raw audio; null: unbounded. Over it a sample is invalid:value_too_large")

    @field_validator("max_abs_value", mode="before")
    @classmethod
    def _max_abs_value(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic names the type error
        merged = dict(cls.model_fields["max_abs_value"].default)
        for name, v in value.items():
            if isinstance(v, str):  # YAML reads 1e6 (no dot) as a string
                with contextlib.suppress(ValueError):
                    v = float(v)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
                raise ValueError(f"{name} must be a finite number > 0, or null for unbounded (got {v!r})")
            merged[name] = v
        return merged

    @field_validator("frame_size")
    @classmethod
    def _frame_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError(f"must be [height, width] with both >= 1 (got {list(value)})")
        return value

    @model_validator(mode="after")
    def _windows(self) -> "NodeConfig":
        if self.max_seq_gap < self.credit:
            raise ValueError(f"node.max_seq_gap ({self.max_seq_gap}) must be >= node.credit ({self.credit}): "
                             "a full credit window must fit in the seq window")
        return self


class Config(_Section):
    """The whole configuration of a learner (and of the node that hosts it)."""

    modalities: dict[str, ModalityConfig] = Field(
        default_factory=_default_modalities, description="the named modalities a sample carries, in order (docs/modalities.md); "
                                                         "the default is audio + video")
    model: ModelConfig = ModelConfig()
    prototypes: PrototypeConfig = PrototypeConfig()
    selection: SerializeAsAny[SelectionSettings] = Field(
        default_factory=lambda: parse_settings("selection", {}), description="admission policy and its settings (the learning step, steps 3-4 (docs/design.md))")
    buffer: BufferConfig = BufferConfig()
    replay: SerializeAsAny[ReplaySettings] = Field(
        default_factory=lambda: parse_settings("replay", {}), description="replay policy and its settings (the learning step, step 6 (docs/design.md))")
    training: TrainingConfig = TrainingConfig()
    node: NodeConfig = NodeConfig()
    features: FeatureConfig = FeatureConfig()
    federation: FederationConfig = Field(default_factory=lambda: FederationConfig())  # defined at the end of this file
    device: str = Field("cpu", description="auto | cpu | cuda | cuda:N")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch default)")

    @field_validator("modalities")
    @classmethod
    def _modality_names(cls, value: dict[str, ModalityConfig]) -> dict[str, ModalityConfig]:
        if not value:
            raise ValueError("declare at least one modality, e.g. {accel: {kind: series, channels: 3}}")
        if len(value) > MAX_MODALITIES:
            raise ValueError(f"{len(value)} modalities declared; at most {MAX_MODALITIES} are supported")
        for name in value:
            if not _MODALITY_NAME.fullmatch(name) or name in _RESERVED_NAMES or name.endswith(("_lengths", "_logits")):
                raise ValueError(f"modality name {name!r}: use 1-32 lowercase letters, digits or _ starting with a letter, "
                                 f"not ending in _lengths or _logits and not one of {list(_RESERVED_NAMES)}")
        return value

    @field_validator("selection", "replay", mode="before")
    @classmethod
    def _policy_settings(cls, value: Any, info: ValidationInfo) -> Any:
        """The settings model of the policy the section names (see :mod:`edge_runtime.core.policy_settings`)."""
        return parse_settings(info.field_name, value)

    @model_validator(mode="after")
    def _frame_size_within_limit(self) -> "Config":
        nc = self.node
        limit = nc.max_frame_size or self.features.image_size
        if nc.frame_size is not None and max(nc.frame_size) > limit:
            raise ValueError(f"node.frame_size {list(nc.frame_size)} is over node.max_frame_size ({limit}; unset, it is "
                             "features.image_size): every sample would be refused frame_too_large; raise node.max_frame_size")
        return self

    @model_validator(mode="after")
    def _max_abs_names(self) -> "Config":
        known = [*self.modalities, "waveform"]
        unknown = sorted(set(self.node.max_abs_value) - set(known), key=str)
        if unknown:
            raise ValueError(f"node.max_abs_value: unknown tensor name(s) {unknown}: the float tensors are {known} "
                             "(the modalities and the raw waveform; uint8 frames are bounded by their dtype)")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N (got {value!r})")
        return value


#: Where an error's key came from: "--set KEY=VALUE", "FILE line N", or None (a default).
Origin = Callable[[str, str, str], "str | None"]


def _error_lines(err: ValidationError) -> list[tuple[str, str, str]]:
    """(dotted key, line text, pydantic error type) of each error of ``err``."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against configs/default.yaml"
        elif e["type"] == "not_a_setting":  # a key the section's policy does not have
            lines.append((key, f"{key} {msg}", e["type"]))
            continue
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append((key, f"{key}: {msg}", e["type"]))
    return lines


def _format(err: ValidationError, source: str, origin: Origin | None = None) -> str:
    """The message of a :class:`ConfigError` for ``err``: each problem on a line that names its key.

    With ``origin`` (:func:`load_config`), each line also names where the key was set: the ``--set``
    it came from, or the file and line; one problem is one line.
    """
    lines = _error_lines(err)
    if origin is None:
        return f"invalid configuration in {source}:\n  " + "\n  ".join(text for _, text, _ in lines)
    placed = []
    for key, text, kind in lines:
        where = origin(key, text, kind)
        placed.append(f"{where}: {text}" if where else text)
    if len(placed) == 1:
        return placed[0] if placed[0] != lines[0][1] else f"invalid configuration ({source}): {placed[0]}"
    return f"invalid configuration ({len(placed)} problems):\n  " + "\n  ".join(placed)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, item: str | None = None) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = f"--set {item}: " if item else ""
            raise ConfigError(f"{where}{dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _split_override(item: str) -> tuple[str, str]:
    """``("buffer.max_items", "500")`` of ``"buffer.max_items=500"``; ConfigError naming the item otherwise."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set buffer.max_items=500")
    return key.strip(), raw


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["buffer.max_items=500", ...]`` into a nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in items or []:
        key, raw = _split_override(item)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
        _set_dotted(tree, key, value, item)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: dict[str, Any] | None, source: str = "<dict>") -> Config:
    """Validate a nested dict into a :class:`Config`; errors name the dotted key."""
    try:
        return Config.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def _read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping of a YAML configuration file and the line of each dotted key in it."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); "
                          "save it as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, selection, ...)")
    return data, lines


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """1-based line of every dotted key of a composed YAML mapping (nested mappings included)."""
    out: dict[str, int] = {}
    if not isinstance(node, yaml.MappingNode):
        return out
    for key_node, value_node in node.value:
        dotted = f"{prefix}{key_node.value}" if isinstance(key_node, yaml.ScalarNode) else f"{prefix}?"
        out[dotted] = key_node.start_mark.line + 1
        out.update(_key_lines(value_node, dotted + "."))
    return out


def _origin(path: str | Path | None, lines: dict[str, int], items: list[str]) -> Origin:
    """Where a key of an error was set: the last ``--set`` of it (or of a section above it, or a key the
    message names), else the line of ``path`` that sets it (or its section), else None (a default)."""
    sets = [(_split_override(item)[0], item) for item in items]

    def named_by(key: str, text: str, kind: str) -> list[str]:
        """The --set items that set ``key`` (or a section above it), else those the message names
        (a check across keys), else those under ``key`` when it is a section."""
        found = [item for k, item in sets if key == k or key.startswith(k + ".")]
        if not found and kind != "not_a_setting":
            found = [item for k, item in sets if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", text)]
        if not found and key not in lines:
            found = [item for k, item in sets if k.startswith(key + ".")]
        return found

    def where(key: str, text: str, kind: str) -> str | None:
        named = named_by(key, text, kind)
        if named:
            return f"--set {named[-1]}"
        policy = f"{key.split('.', 1)[0]}.policy"
        via = [item for k, item in sets if k == policy] if kind == "not_a_setting" else []
        mentioned = [k for k in lines if "." in k and re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", text)]
        section = any(k.startswith(key + ".") for k in lines)  # a check over the section's keys: point at one it names
        candidates = ([] if section else [key]) + mentioned[-1:] + [key, *_parents(key)]
        found = next((k for k in candidates if k in lines), None)
        if found is None:
            return f"--set {via[-1]}" if via else None
        place = f"{path} line {lines[found]}"
        return f"{place} (the policy comes from --set {via[-1]})" if via else place

    return where


def _parents(key: str) -> list[str]:
    """``["a.b", "a"]`` of ``"a.b.c"``."""
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict[str, Any] | None = None) -> Config:
    """Load a YAML file (or the defaults when ``path`` is None) and apply ``KEY=VALUE`` overrides.

    ``defaults``: a nested dict under the file (a command's own defaults, e.g. a demo's). An error
    names where the offending key was set: ``--set selection.keep_ratio=0.3: ...`` for an override,
    ``configs/x.yaml line 12: ...`` for the file.
    """
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data, lines = _read_yaml(path)
    items = list(overrides or [])
    merged = _merge(_merge(defaults or {}, data), parse_overrides(items))
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format(err, source, _origin(path, lines, items))) from None


# --------------------------------------------------------------------------- federation (issue 12)
#: Largest FedProx mu a node takes (config and control-channel put): lr * mu stays a pull, never a push.
PROXIMAL_MU_MAX = 10.0
_LOOPBACK_HOSTS = ("127.0.0.1", "[::1]", "localhost")


class FederationConfig(_Section):
    """Several edge nodes learning as one on Flower (``edge_runtime/federation/``, docs/federation.md).

    The node only needs ``enabled`` and ``control_bind`` (its local control channel); the other keys
    are read by the Flower ServerApp and ClientApp.
    """

    enabled: bool = Field(False, description="start the local control channel (get / put of weights and prototypes)")
    control_allow_remote: bool = Field(
        False, description="let control_bind be a non-loopback TCP endpoint; the channel then needs node.curve (CURVE, allowed keys)")
    control_bind: str | None = Field(
        None, description="ZeroMQ endpoint of the control channel, ipc://PATH or tcp://127.0.0.1|[::1]|localhost:PORT "
                          "(None: ipc://<node.state_dir>/control.ipc, mode 0600)")
    control_max_bytes: int = Field(
        64 * 2**20, ge=2**20, le=2**31, description="largest control message (MAXMSGSIZE per frame, and the sum of its frames); "
                                                    "the node's own get must fit")
    control_log_max_bytes: int = Field(
        8 * 2**20, ge=64 * 2**10, le=2**34, description="state_dir/control.jsonl is rotated to control.jsonl.1 at this size (one old file kept)")
    max_abs_weight: float = Field(
        1e4, gt=0.0, le=1e30, description="a put whose weights or prototypes hold a value beyond +-this is refused (out_of_range)")
    rounds: int = Field(3, ge=1, le=100_000, description="federated rounds the ServerApp runs")
    samples_per_round: int = Field(200, ge=0, description="a node answers a round after learning this many samples since the last merge ...")
    round_interval_s: float = Field(30.0, gt=0.0, description="... or after this many seconds, whichever comes first")
    strategy: Literal["fedavg", "fedprox", "fedadam"] = Field("fedavg", description="flwr strategy; weights averaged by samples learned since the last round")
    proximal_mu: float = Field(0.01, ge=0.0, le=PROXIMAL_MU_MAX, description="fedprox: pull of the local weights towards the round's global weights")
    server_lr: float = Field(0.1, gt=0.0, description="fedadam: server learning rate (eta)")
    server_tau: float = Field(1e-3, gt=0.0, description="fedadam: adaptivity (tau)")
    min_nodes: int = Field(2, ge=1, description="nodes needed to start a round and to aggregate it (flwr min_available/min_train)")
    round_timeout_s: float = Field(120.0, gt=0.0, description="a round waits this long for replies, then aggregates what came (or keeps the old global model)")
    control_timeout_s: float = Field(5.0, gt=0.0, description="the ClientApp gives up on a node that does not answer within this")

    @field_validator("control_bind")
    @classmethod
    def _control_bind(cls, value: str | None, info: ValidationInfo) -> str | None:
        """ipc:// or loopback TCP, unless control_allow_remote (then the node requires CURVE)."""
        if value is not None and value.startswith("ipc://@"):
            raise ValueError("an abstract ipc socket (ipc://@NAME) has no file mode: any local user could reach it; "
                             "bind ipc://PATH (a file, mode 0600) or tcp://127.0.0.1:PORT")
        if value is None or value.startswith("ipc://"):
            return value
        if not value.startswith("tcp://"):
            raise ValueError("must be ipc://PATH or tcp://127.0.0.1:PORT")
        host = value[len("tcp://"):].rpartition(":")[0]
        if host not in _LOOPBACK_HOSTS and not info.data.get("control_allow_remote", False):
            raise ValueError("this endpoint is reachable from other machines and the control channel can replace the model; "
                             "bind ipc://PATH or tcp://127.0.0.1:PORT, or set federation.control_allow_remote: true "
                             "(which requires node.curve.enabled)")
        return value


Config.model_rebuild()  # resolves Config.federation, defined above Config in name only
