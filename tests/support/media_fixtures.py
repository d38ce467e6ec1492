"""Builders of tiny CREMA-D and AVE folders in their real layouts (for the data-set tests).

Media are generated here: WAV files with soundfile, JPEG frames with Pillow, FLV (Sorenson H.263
``flv`` video + MP3 audio) and MP4 (MPEG-4 part 2 video + AAC audio) with PyAV.  Frames are
32 x 32 (or slightly larger, to exercise resizing) and uniformly grey, with a known grey level, so
a test can tell which file (and which second of it) a decoded frame came from.
"""

from __future__ import annotations

import fractions
from collections.abc import Callable, Iterable
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image

SIZE = 32


def sine(seconds: float, sr: int, freq: float = 440.0, amplitude: float | Callable[[np.ndarray], np.ndarray] = 0.3) -> np.ndarray:
    """A float32 sine of ``seconds`` at ``sr``; ``amplitude`` may be a function of time (s)."""
    t = np.arange(int(round(seconds * sr))) / sr
    amp = amplitude(t) if callable(amplitude) else amplitude
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sr: int, subtype: str = "PCM_16") -> np.ndarray:
    """Write ``wave`` ((N,) or (N, channels)) to ``path``; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sr, subtype=subtype)
    return wave


def gray_frame(level: int, width: int = SIZE, height: int = SIZE) -> np.ndarray:
    """A uniform grey uint8 RGB frame (height, width, 3)."""
    return np.full((height, width, 3), level, dtype=np.uint8)


def write_jpeg_frames(folder: Path, levels: Iterable[int], width: int = SIZE, height: int = SIZE) -> None:
    """Frames ``folder/00000.jpg, 00001.jpg, ...`` of uniform grey ``levels``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, level in enumerate(levels):
        Image.fromarray(gray_frame(level, width, height)).save(folder / f"{i:05d}.jpg", quality=95)


def write_video(
    path: Path,
    seconds: float,
    level: Callable[[float], int],
    amplitude: float | Callable[[np.ndarray], np.ndarray] = 0.3,
    fps: int = 10,
    sr: int = 22050,
    vcodec: str = "flv",
    acodec: str = "mp3",
) -> None:
    """A ``seconds`` long video: grey frames of ``level(t)`` at ``fps``, a 440 Hz sine at ``sr``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        vstream = container.add_stream(vcodec, rate=fps)
        vstream.width = vstream.height = SIZE
        vstream.pix_fmt = "yuv420p"
        astream = container.add_stream(acodec, rate=sr)
        astream.layout = "mono"
        for i in range(int(round(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(gray_frame(level(i / fps)), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        wave = sine(seconds, sr, amplitude=amplitude)
        step = astream.codec_context.frame_size or 1024
        for start in range(0, wave.size, step):
            chunk = np.ascontiguousarray(wave[None, start : start + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sr, start, fractions.Fraction(1, sr)
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)


def write_flv(path: Path, seconds: float, level: Callable[[float], int], **kw) -> None:
    """An FLV (flv1 video + MP3 audio at 22050 Hz), as in CREMA-D's VideoFlash/."""
    write_video(path, seconds, level, vcodec="flv", acodec="mp3", sr=22050, **kw)


def write_mp4(path: Path, seconds: float, level: Callable[[float], int], **kw) -> None:
    """An MP4 (MPEG-4 video + AAC audio at 16 kHz), as in AVE's AVE/."""
    write_video(path, seconds, level, vcodec="mpeg4", acodec="aac", sr=16000, **kw)


def write_text(path: Path, lines: list[str], bom: bool = False, crlf: bool = False) -> None:
    """Write ``lines`` (each ended by a newline), optionally with a UTF-8 BOM and CRLF line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    eol = "\r\n" if crlf else "\n"
    data = "".join(line + eol for line in lines).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)


# ---------------------------------------------------------------------------------------------
# CREMA-D
# ---------------------------------------------------------------------------------------------

# clip name -> grey level of its frames (distinct per clip, so a test can tell clips apart)
CREMAD_RAW_CLIPS = {
    "1001_DFA_ANG_XX": 30,
    "1001_IEO_HAP_LO": 60,
    "1002_TIE_SAD_MD": 90,
    "1002_IOM_NEU_XX": 120,
    "1003_DFA_FEA_HI": 150,
    "1003_ITS_DIS_XX": 180,
}
CREMAD_RAW_MISSING_VIDEO = "1004_TAI_NEU_XX"  # AudioWAV/ has it, VideoFlash/ does not
CREMAD_WAV_SECONDS = 1.2
CREMAD_FLV_SECONDS = 1.5


def build_cremad_raw(root: Path) -> Path:
    """The raw release layout: AudioWAV/*.wav (16 kHz) and VideoFlash/*.flv; one FLV missing."""
    for name, level in CREMAD_RAW_CLIPS.items():
        write_wav(root / "AudioWAV" / f"{name}.wav", sine(CREMAD_WAV_SECONDS, 16000), 16000)
        write_flv(root / "VideoFlash" / f"{name}.flv", CREMAD_FLV_SECONDS, lambda t, v=level: v)
    write_wav(root / "AudioWAV" / f"{CREMAD_RAW_MISSING_VIDEO}.wav", sine(CREMAD_WAV_SECONDS, 16000), 16000)
    (root / "AudioWAV" / "README.txt").write_text("not a clip\n")
    return root


CREMAD_TRAIN_ROWS = [
    ("1001_DFA_ANG_XX", "ANG"),
    ("1001_IEO_HAP_LO", "HAP"),
    ("1002_TIE_SAD_MD", "SAD"),
    ("1002_IOM_NEU_XX", "NEU"),
    ("1003_DFA_FEA_HI", "FEA"),
]
CREMAD_TEST_ROWS = [
    ("1003_ITS_DIS_XX", "DIS"),
    ("1004_TAI_NEU_XX", "NEU"),  # listed, but its Image-01-FPS/ folder is missing
    ("1004_DFA_ANG_XX", "ANG"),
]
CREMAD_PRE_MISSING = "1004_TAI_NEU_XX"
CREMAD_STEREO_8K = "1002_TIE_SAD_MD"  # its WAV is stereo at 8 kHz (tests mono + resampling)


def cremad_pre_frames(name: str) -> list[int]:
    """Grey levels of the JPEG frames of ``name`` in the preprocessed fixture (2 or 3 frames)."""
    base = 20 + 10 * sorted(n for n, _ in CREMAD_TRAIN_ROWS + CREMAD_TEST_ROWS).index(name)
    return [base, base + 100] if name.endswith("XX") else [base, base + 50, base + 100]


def build_cremad_preprocessed(root: Path) -> Path:
    """The common preprocessing: train.csv/test.csv (BOM + CRLF), AudioWAV/, Image-01-FPS/."""
    write_text(root / "train.csv", [f"{n},{e}" for n, e in CREMAD_TRAIN_ROWS], bom=True, crlf=True)
    write_text(root / "test.csv", [f"{n},{e}" for n, e in CREMAD_TEST_ROWS], bom=True, crlf=True)
    for name, _ in CREMAD_TRAIN_ROWS + CREMAD_TEST_ROWS:
        if name == CREMAD_STEREO_8K:
            wave = np.stack([sine(1.0, 8000, amplitude=0.2), sine(1.0, 8000, freq=300, amplitude=0.4)], axis=1)
            write_wav(root / "AudioWAV" / f"{name}.wav", wave, 8000)
        else:
            write_wav(root / "AudioWAV" / f"{name}.wav", sine(CREMAD_WAV_SECONDS, 16000), 16000)
        if name != CREMAD_PRE_MISSING:
            write_jpeg_frames(root / "Image-01-FPS" / name, cremad_pre_frames(name), width=48, height=40)
    return root


# ---------------------------------------------------------------------------------------------
# AVE
# ---------------------------------------------------------------------------------------------

AVE_HEADER = "Category&VideoID&Quality&StartTime&EndTime"
AVE_TEST = [
    "Dog&vid_t1&good&0&1",
    "Church bell&vid_t2&good&0&1",
    "Dog&vid_t3&good&0&1",
]
AVE_TRAIN = [
    "Church bell&vid_a&good&1&3",  # a 4 s video cut to [1, 3)
    "Acoustic guitar&vid_b&good&0&1",
    "Dog&vid_c&good&0&1",
    "Church bell&vid_a&bad&0&2",  # repeated id: the first row wins
    "Dog&vid_missing&good&0&1",  # listed, file missing
]
AVE_VAL = [
    "Acoustic guitar&vid_v1&good&0&1",
    "Frying (food)&vid_v2&good&0&1",  # a class that appears only in valSet.txt
]
AVE_LONG = "vid_a"
AVE_MISSING = "vid_missing"


def ave_level(video_id: str, t: float) -> int:
    """Grey level of ``video_id``'s frame at time ``t``: distinct per clip and per second."""
    return 20 + 40 * int(t) if video_id == AVE_LONG else 30 + 15 * (sorted(_ave_ids()).index(video_id) % 12)


def ave_amplitude(t: np.ndarray) -> np.ndarray:
    """The long clip's sine amplitude: 0.4 inside [1, 3) s, 0.05 outside."""
    return np.where((t >= 1.0) & (t < 3.0), 0.4, 0.05)


def _ave_ids() -> set[str]:
    return {line.split("&")[1] for line in AVE_TEST + AVE_TRAIN + AVE_VAL} - {AVE_MISSING}


def _ave_lists(root: Path) -> None:
    write_text(root / "Annotations.txt", [AVE_HEADER] + AVE_TEST + AVE_TRAIN + AVE_VAL, bom=True, crlf=True)
    write_text(root / "trainSet.txt", AVE_TRAIN, crlf=True)
    write_text(root / "valSet.txt", AVE_VAL, crlf=True)
    write_text(root / "testSet.txt", AVE_TEST, crlf=True)


def build_ave_raw(root: Path) -> Path:
    """The raw release: list files and AVE/{id}.mp4 (vid_a 4 s, others 1 s; vid_missing absent)."""
    _ave_lists(root)
    for vid in sorted(_ave_ids()):
        if vid == AVE_LONG:
            write_mp4(root / "AVE" / f"{vid}.mp4", 4.0, lambda t: ave_level(AVE_LONG, t), amplitude=ave_amplitude)
        else:
            write_mp4(root / "AVE" / f"{vid}.mp4", 1.0, lambda t, v=vid: ave_level(v, t))
    return root


AVE_PRE_FRAMES = 3


def build_ave_preprocessed(root: Path) -> Path:
    """The common preprocessing: list files, Audios/{id}.wav, Image-01-FPS-SE/{id}/*.jpg."""
    _ave_lists(root)
    for vid in sorted(_ave_ids()):
        write_wav(root / "Audios" / f"{vid}.wav", sine(0.5, 16000), 16000)
        write_jpeg_frames(root / "Image-01-FPS-SE" / vid, [ave_level(vid, 0.0)] * AVE_PRE_FRAMES)
    return root
