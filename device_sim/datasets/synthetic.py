"""The embedded synthetic audio-visual data set (no downloads).

Every class ``c`` has a fixed audio template (a smooth (frames x features) pattern: a class-specific
level per feature plus class-specific sinusoids over time, evaluated at the sample's own length)
and a fixed visual template (oriented bars: a grating of class-specific orientation and spacing
under a wide Gaussian window, drifting slightly from frame to frame).  A sample of class ``c``
with informativeness ``s_a``, ``s_v`` is::

    audio = s_a * template_a[c] + noise * N(0, 1)      # (T_a, F) float32
    video = s_v * template_v[c] + noise * N(0, 1)      # (T_v, C, H, W) float32

so each sample's per-modality strength is known ground truth (``meta["informativeness"]``).  A
sample is ``"balanced"`` (both modalities informative), ``"audio"``-dominated (audio informative,
video weak) or ``"video"``-dominated, with the fractions of :class:`SyntheticConfig`.

``sample(i)`` is a pure function of ``(seed, i)``: indices ``0 .. size-1`` are the stream, and
:meth:`SyntheticDataset.test_set` draws held-out samples from indices ``size, size+1, ...`` of the
same distribution.  Labels are exactly balanced within every block of ``num_classes`` indices.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from device_sim.datasets.base import Dataset, Option
from edge_runtime.core.sample import Sample

KINDS = ("balanced", "audio", "video")
_TEMPLATE_TAG = 0x5EED7E
_LABEL_TAG = 0x1ABE1


class SyntheticConfig(BaseModel):
    """Shape and difficulty of the synthetic data set.

    Ranges are ``(min, max)``, inclusive.  ``fractions`` gives the share of ``balanced``,
    ``audio``-dominated and ``video``-dominated samples (summing to 1).  An informative modality
    gets a strength drawn from ``informative``, a dominated (weak) one from ``dominated``.
    Template amplitudes are root-mean-square values relative to unit-variance noise (``noise``
    scales the noise): ``audio_scale`` is the per-feature class level, the only part that survives
    averaging over time; ``audio_wave`` the zero-mean class sinusoids, visible only to a model
    that looks at the sequence; ``video_scale`` the visual bars.

    Calibration of the defaults (seeds 0-3, 3000 held-out samples): a nearest-class-mean
    classifier on time-averaged audio gets 70-75 % on balanced samples, 70-77 % on audio-dominated
    ones and 17-23 % on video-dominated ones (chance 10 %).  On time-averaged frames it gets 100 %
    where video is informative and 50-65 % where it is weak (a matched filter over 256 pixels is
    far more efficient than a small CNN: for a conv + GRU network trained online on 3000 samples,
    the weak video is close to uninformative).
    """

    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(10, ge=2)
    audio_features: int = Field(13, ge=1)
    audio_frames: tuple[int, int] = (20, 40)
    video_frames: tuple[int, int] = (2, 6)
    image_size: int = Field(16, ge=4)
    channels: int = Field(1, ge=1)
    noise: float = Field(1.0, ge=0.0)
    fractions: dict[str, float] = Field(default_factory=lambda: {"balanced": 0.6, "audio": 0.2, "video": 0.2})
    informative: tuple[float, float] = (0.7, 1.0)
    dominated: tuple[float, float] = (0.05, 0.3)
    audio_scale: float = Field(0.14, ge=0.0, description="rms of the audio templates' per-feature level")
    audio_wave: float = Field(0.6, ge=0.0, description="rms of the audio templates' zero-mean sinusoids")
    video_scale: float = Field(1.0, ge=0.0, description="rms of the visual templates")
    imu_channels: int = Field(0, ge=0, le=64, description="channels of an optional third modality, imu (a series); 0: none")
    imu_frames: tuple[int, int] = (10, 20)
    imu_scale: float = Field(0.8, ge=0.0, description="rms of the imu templates")
    size: int = Field(5000, ge=1, description="samples in the stream (indices 0 .. size-1)")
    seed: int = Field(0, ge=0)

    @field_validator("audio_frames", "video_frames", "imu_frames", "informative", "dominated")
    @classmethod
    def _range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        """A (min, max) pair: frame counts start at 1, strengths at 0."""
        floor = 1 if info.field_name.endswith("frames") else 0.0
        lo, hi = value
        if not floor <= lo <= hi:
            raise ValueError(f"must be (min, max) with {floor} <= min <= max (got {value})")
        return value

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(KINDS):
            raise ValueError(f"must give exactly the kinds {list(KINDS)} (got {sorted(value)})")
        if any(v < 0 for v in value.values()) or abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError(f"must be non-negative and sum to 1 (got {value})")
        return value


class SyntheticDataset(Dataset):
    """Procedural audio-visual classes with per-sample, per-modality informativeness."""

    name = "synthetic"
    title = "synthetic"
    splits: ClassVar[tuple[str, ...]] = ()  # one generated stream; test_set() draws held-out samples
    cli_options: ClassVar[tuple[Option, ...]] = (
        Option("--imu-channels", "synthetic: add a third modality, imu, a series of this many channels (default 0: "
                                 "audio + video only; the node's configuration must declare imu: {kind: series, channels: N})",
               default=0, type=int, metavar="N"),)
    #: The benchmarks' (train, test) pair: sizes of the stream (seed 0) and of the held-out draw (seed 1).
    TRAIN_TEST_SIZES: ClassVar[tuple[int, int]] = (2400, 600)

    def __init__(self, cfg: SyntheticConfig | None = None, **overrides: object) -> None:
        """Build the class templates of ``cfg`` (or of ``SyntheticConfig(**overrides)``)."""
        if cfg is None:
            cfg = SyntheticConfig(**overrides)
        elif overrides:
            cfg = SyntheticConfig.model_validate({**cfg.model_dump(), **overrides})
        self.cfg = cfg
        self._kind_p = np.array([cfg.fractions[k] for k in KINDS], dtype=np.float64)
        rng = np.random.default_rng([cfg.seed, _TEMPLATE_TAG])
        self._make_audio_params(rng)
        self._video = self._make_video_templates(rng)
        self._audio_cache: dict[int, np.ndarray] = {}
        # drawn after the other templates, so that the audio-visual data set is the same with or without imu
        self._imu_freq = rng.uniform(0.5, 3.0, (cfg.num_classes, cfg.imu_channels)) if cfg.imu_channels else None
        self._labels = self._label_range(0, cfg.size)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of classes (``cfg.num_classes``)."""
        return self.cfg.num_classes

    @classmethod
    def from_options(cls, *, split: str = "train", seed: int = 0, samples: int | None = None, **options: Any) -> SyntheticDataset:
        """``samples`` (when given) is the stream's size; ``split`` is ignored (there are no splits);
        other keywords are :class:`SyntheticConfig` fields."""
        return cls(**({"size": samples} if samples else {}), seed=seed, **options)

    @classmethod
    def train_test(cls, train_split: str = "train", test_split: str = "test", **options: Any) -> tuple[SyntheticDataset, SyntheticDataset]:
        """Two differently seeded draws (seed 0 and seed 1) of :data:`TRAIN_TEST_SIZES` samples.

        The splits, and ``seed`` / ``samples`` among ``options``, are ignored.  The seed also draws
        the class templates, so the two draws do not share them (:meth:`test_set` is the held-out
        set of the same templates).
        """
        options = {k: v for k, v in options.items() if k not in ("seed", "samples")}
        train, test = cls.TRAIN_TEST_SIZES
        return cls.from_options(seed=0, samples=train, **options), cls.from_options(seed=1, samples=test, **options)

    @classmethod
    def available(cls, root: str | None = None) -> tuple[bool, str]:
        """Always: the data set is generated."""
        return True, "embedded, generated on the fly"

    # ------------------------------------------------------------------ templates
    def _make_audio_params(self, rng: np.random.Generator) -> None:
        k, f = self.cfg.num_classes, self.cfg.audio_features
        self._a_level = rng.standard_normal((k, f))  # time-averaged class signature
        self._a_amp = rng.uniform(0.5, 1.0, (k, f))
        self._a_freq = rng.integers(1, 4, (k, f)).astype(np.float64)  # whole cycles per clip
        self._a_phase = rng.uniform(0.0, 2 * np.pi, (k, f))

    def audio_template(self, label: int, frames: int) -> np.ndarray:
        """Class ``label``'s audio template at ``frames`` frames, (frames, F) float64.

        A per-feature level (rms ``audio_scale``; what survives averaging over time) plus
        sinusoids of 1-3 whole cycles per clip (rms ``audio_wave``; zero mean over the clip),
        evaluated at the clip's own length.
        """
        bank = self._audio_cache.get(frames)
        if bank is None:
            u = (np.arange(frames) + 0.5) / frames  # the same smooth curve, resampled to the length
            wave = self._a_amp[:, None, :] * np.sin(2 * np.pi * self._a_freq[:, None, :] * u[None, :, None] + self._a_phase[:, None, :])
            wave_rms = np.sqrt((self._a_amp**2).mean(axis=1) / 2)[:, None, None]
            level_rms = np.sqrt((self._a_level**2).mean(axis=1))[:, None, None]
            bank = self._a_level[:, None, :] / level_rms * self.cfg.audio_scale + wave / wave_rms * self.cfg.audio_wave
            self._audio_cache[frames] = bank
        return bank[label]

    def imu_template(self, label: int, frames: int) -> np.ndarray:
        """Class ``label``'s imu template, (frames, imu_channels) float64: one sinusoid per channel at a
        class-specific number of cycles per clip, rms ``imu_scale``."""
        assert self._imu_freq is not None
        t = np.arange(frames)[:, None] / max(frames, 1)
        return np.sqrt(2.0) * self.cfg.imu_scale * np.sin(2 * np.pi * self._imu_freq[label][None, :] * t * 2)

    def _make_video_templates(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        k, t, c, n = cfg.num_classes, cfg.video_frames[1], cfg.channels, cfg.image_size
        grid = (np.arange(n) + 0.5) / n - 0.5
        y, x = np.meshgrid(grid, grid, indexing="ij")
        # Orientations spread over [0, pi) in a seeded class order, so classes differ clearly.
        theta = (rng.permutation(k) + rng.uniform(-0.2, 0.2, k)) * np.pi / k
        freq = rng.uniform(3.0, 5.0, k)  # cycles across the image: bars 2-3 pixels wide at 16 x 16
        phase0 = rng.uniform(0, 2 * np.pi, k)
        speed = rng.uniform(0.3, 0.8, k) * rng.choice([-1.0, 1.0], k)  # phase drift, radians per frame
        centre = rng.uniform(-0.1, 0.1, (k, 2))
        gain = rng.uniform(0.6, 1.0, (k, c))
        out = np.empty((k, t, c, n, n))
        for cls in range(k):
            along = x * np.cos(theta[cls]) + y * np.sin(theta[cls])
            # A wide Gaussian window: the bars fade out towards the image border.
            window = np.exp(-((x - centre[cls, 0]) ** 2 + (y - centre[cls, 1]) ** 2) / (2 * 0.45**2))
            for f in range(t):
                bars = np.cos(2 * np.pi * freq[cls] * along + phase0[cls] + speed[cls] * f)
                out[cls, f] = gain[cls][:, None, None] * (window * bars)[None]
        rms = np.sqrt((out**2).mean(axis=(1, 2, 3, 4), keepdims=True))
        return out / rms * cfg.video_scale

    def video_template(self, label: int, frames: int) -> np.ndarray:
        """Class ``label``'s first ``frames`` video frames, (frames, C, H, W) float64."""
        return self._video[label, :frames]

    # ------------------------------------------------------------------ labels
    def _label_range(self, start: int, stop: int) -> np.ndarray:
        k = self.cfg.num_classes
        first, last = start // k, (stop - 1) // k
        blocks = [np.random.default_rng([self.cfg.seed, _LABEL_TAG, b]).permutation(k) for b in range(first, last + 1)]
        flat = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
        return flat[start - first * k : stop - first * k].astype(np.int64)

    def label(self, index: int) -> int:
        """The label of sample ``index`` (any index >= 0)."""
        if 0 <= index < self.cfg.size:
            return int(self._labels[index])
        return int(self._label_range(index, index + 1)[0])

    def labels(self) -> np.ndarray:
        """Labels of the stream's samples ``0 .. size-1`` (int64, without generating the samples)."""
        return self._labels.copy()

    # ------------------------------------------------------------------ samples
    def __len__(self) -> int:
        return self.cfg.size

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.cfg.size):
            yield self.sample(i)

    def __getitem__(self, index: int) -> Sample:
        if not -self.cfg.size <= index < self.cfg.size:
            raise IndexError(f"index {index} out of range for a data set of {self.cfg.size} samples")
        return self.sample(index % self.cfg.size)

    def sample(self, index: int, split: str = "train") -> Sample:
        """Sample ``index``: a pure function of ``(seed, index)``; indices >= size are held out."""
        if index < 0:
            raise IndexError(f"sample index must be >= 0 (got {index})")
        cfg = self.cfg
        rng = np.random.Generator(np.random.PCG64([cfg.seed, int(index)]))
        label = self.label(index)
        kind = KINDS[int(rng.choice(3, p=self._kind_p))]
        strong, weak = cfg.informative, cfg.dominated
        range_a, range_v = {"balanced": (strong, strong), "audio": (strong, weak), "video": (weak, strong)}[kind]
        s_a = float(rng.uniform(*range_a))
        s_v = float(rng.uniform(*range_v))
        t_a = int(rng.integers(cfg.audio_frames[0], cfg.audio_frames[1] + 1))
        t_v = int(rng.integers(cfg.video_frames[0], cfg.video_frames[1] + 1))
        audio = s_a * self.audio_template(label, t_a) + cfg.noise * rng.standard_normal((t_a, cfg.audio_features))
        shape_v = (t_v, cfg.channels, cfg.image_size, cfg.image_size)
        video = s_v * self.video_template(label, t_v) + cfg.noise * rng.standard_normal(shape_v)
        tensors = {"audio": np.ascontiguousarray(audio, dtype=np.float32), "video": np.ascontiguousarray(video, dtype=np.float32)}
        informativeness = {"audio": s_a, "video": s_v}
        if cfg.imu_channels:  # drawn last: the audio-visual part of a sample is the same with or without imu
            s_i = float(rng.uniform(*strong))
            t_i = int(rng.integers(cfg.imu_frames[0], cfg.imu_frames[1] + 1))
            imu = s_i * self.imu_template(label, t_i) + cfg.noise * rng.standard_normal((t_i, cfg.imu_channels))
            tensors["imu"] = np.ascontiguousarray(imu, dtype=np.float32)
            informativeness["imu"] = s_i
        return Sample(tensors=tensors, label=label, split=split, device=self.name, seq=int(index),
                      meta={"informativeness": informativeness, "kind": kind, "index": int(index)})

    def test_set(self, n: int, offset: int = 0) -> list[Sample]:
        """``n`` held-out samples (indices ``size + offset ...``, never in the stream), split ``eval``."""
        if n < 0:
            raise ValueError(f"n must be >= 0 (got {n})")
        start = self.cfg.size + offset
        return [self.sample(i, split="eval") for i in range(start, start + n)]
