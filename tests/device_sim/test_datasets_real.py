"""CREMA-D and AVE readers on tiny generated folders in each real layout (see media_fixtures)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from tests.support import media_fixtures as mf
from device_sim.datasets import ave as ave_mod
from device_sim.datasets import cremad as cremad_mod
from device_sim.datasets.ave import AVE
from device_sim.datasets.cremad import CremaD
from device_sim.datasets.media import MissingFilesWarning, decode_video, load_jpeg_frames
from edge_runtime.core.features import FeatureConfig, audio_features, frame_features, to_features
from edge_runtime.core.sample import Sample

CREMAD_ORDER = {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    return {
        "cremad_raw": mf.build_cremad_raw(base / "cremad_raw"),
        "cremad_pre": mf.build_cremad_preprocessed(base / "cremad_pre"),
        "ave_raw": mf.build_ave_raw(base / "ave_raw"),
        "ave_pre": mf.build_ave_preprocessed(base / "ave_pre"),
    }


def load(cls, *args, **kwargs):
    """Build a data set, returning it with the MissingFilesWarnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = cls(*args, **kwargs)
    return ds, [w for w in caught if issubclass(w.category, MissingFilesWarning)]


def frame_levels(sample: Sample) -> list[float]:
    """Mean grey level of each raw frame of a send='raw' sample."""
    return [float(f.mean()) for f in sample.tensors["frames"]]


# =========================================================================== media helpers


def test_decode_video_cut_frames_and_audio(roots):
    path = roots["ave_raw"] / "AVE" / f"{mf.AVE_LONG}.mp4"
    full = decode_video(path)
    assert full.frames.shape == (4, 32, 32, 3) and full.frames.dtype == np.uint8
    np.testing.assert_allclose([f.mean() for f in full.frames], [20, 60, 100, 140], atol=3)
    assert full.sample_rate == 16000
    cut = decode_video(path, start_s=1.0, end_s=3.0)
    assert cut.frames.shape == (2, 32, 32, 3)
    np.testing.assert_allclose([f.mean() for f in cut.frames], [60, 100], atol=3)
    np.testing.assert_allclose(cut.times, [1.0, 2.0])
    assert cut.wave.dtype == np.float32 and abs(cut.wave.size - 32000) <= 0.02 * 32000
    # inside [1, 3) the sine has amplitude 0.4 (rms 0.283); outside 0.05
    assert abs(float(np.sqrt(np.mean(cut.wave**2))) - 0.4 / np.sqrt(2)) < 0.03
    head = decode_video(path, end_s=1.0)
    assert float(np.sqrt(np.mean(head.wave[1000:-1000] ** 2))) < 0.06


def test_decode_flv_at_two_fps(roots):
    path = roots["cremad_raw"] / "VideoFlash" / "1002_TIE_SAD_MD.flv"
    media = decode_video(path, fps=2.0, audio=False)
    assert media.frames.shape == (3, 32, 32, 3)  # 1.5 s at 2 fps: t = 0, 0.5, 1.0
    np.testing.assert_allclose(media.times, [0.0, 0.5, 1.0])
    np.testing.assert_allclose([f.mean() for f in media.frames], [90] * 3, atol=3)
    assert media.wave.size == 0


def test_load_jpeg_frames_sorted_by_name(tmp_path):
    mf.write_jpeg_frames(tmp_path / "clip", [10, 200, 100])
    (tmp_path / "clip" / "00001.jpg").rename(tmp_path / "clip" / "00009.jpg")  # now last by name
    frames = load_jpeg_frames(tmp_path / "clip")
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [10, 100, 200], atol=2)
    with pytest.raises(FileNotFoundError, match="no JPEG frames"):
        load_jpeg_frames(tmp_path / "empty")


# =========================================================================== CREMA-D


def test_cremad_preprocessed_labels_and_order(roots):
    ds, caught = load(CremaD, roots["cremad_pre"], split="train")
    assert ds.layout == "preprocessed" and ds.name == "cremad"
    assert ds.num_classes == 6 and ds.class_names == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert caught == []
    assert [c.name for c in ds.clips] == [n for n, _ in mf.CREMAD_TRAIN_ROWS]
    assert ds.labels().dtype == np.int64
    assert ds.labels().tolist() == [5, 1, 2, 0, 3]  # ANG HAP SAD NEU FEA
    assert len(ds) == 5


def test_cremad_preprocessed_missing_clip_warned_once(roots):
    ds, caught = load(CremaD, roots["cremad_pre"], split="test")
    assert [c.name for c in ds.clips] == ["1003_ITS_DIS_XX", "1004_DFA_ANG_XX"]
    assert ds.labels().tolist() == [CREMAD_ORDER["DIS"], CREMAD_ORDER["ANG"]]
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "1 listed clip" in msg and mf.CREMAD_PRE_MISSING in msg and "Image-01-FPS" in msg


def test_cremad_strict_raises(roots):
    with pytest.raises(ValueError, match=r"1 listed clip\(s\).*Image-01-FPS/1004_TAI_NEU_XX"):
        CremaD(roots["cremad_pre"], split="test", strict=True)
    with pytest.raises(ValueError, match=r"1 listed clip\(s\).*VideoFlash/1004_TAI_NEU_XX.flv"):
        # the raw release's missing FLV, whichever split the seeded split put it in
        for split in ("train", "test"):
            CremaD(roots["cremad_raw"], split=split, strict=True)


def test_cremad_preprocessed_sample_shapes(roots):
    cfg = FeatureConfig()
    ds, _ = load(CremaD, roots["cremad_pre"], split="train", features=cfg)
    for i, clip in enumerate(ds.clips):
        s = ds.sample(i)
        assert isinstance(s, Sample) and s.meta == {"clip": clip.name} and s.label == ds.labels()[i]
        n_frames = len(mf.cremad_pre_frames(clip.name))
        assert s.tensors["video"].shape == (n_frames, 1, 32, 32) and s.tensors["video"].dtype == np.float32
        samples = 16000 if clip.name == mf.CREMAD_STEREO_8K else int(mf.CREMAD_WAV_SECONDS * 16000)
        assert s.tensors["audio"].shape == (1 + samples // 160, 13) and s.tensors["audio"].dtype == np.float32
    raw, _ = load(CremaD, roots["cremad_pre"], split="train", send="raw")
    first = raw.sample(0)
    assert first.tensors["frames"].shape == (2, 40, 48, 3)
    np.testing.assert_allclose(frame_levels(first), mf.cremad_pre_frames("1001_DFA_ANG_XX"), atol=2)


def test_cremad_annotations_subfolder(roots, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(roots["cremad_pre"], root)
    (root / "annotations").mkdir()
    for name in ("train.csv", "test.csv"):
        (root / name).rename(root / "annotations" / name)
    ds, _ = load(CremaD, root, split="train")
    assert ds.layout == "preprocessed" and ds.labels().tolist() == [5, 1, 2, 0, 3]


def test_cremad_raw_default_split(roots):
    train, w_train = load(CremaD, roots["cremad_raw"], split="train")
    test, w_test = load(CremaD, roots["cremad_raw"], split="test")
    assert train.layout == test.layout == "raw"
    present = set(mf.CREMAD_RAW_CLIPS)
    names_train, names_test = {c.name for c in train.clips}, {c.name for c in test.clips}
    assert names_train.isdisjoint(names_test) and names_train | names_test == present
    # 7 listed clips (union of both folders), round(0.2 * 7) = 1 in test; the missing one is dropped
    missing_in_test = len(w_test)
    assert len(test) + missing_in_test == 1
    assert len(w_train) + len(w_test) == 1
    warning = (w_train + w_test)[0]
    assert "1 listed clip" in str(warning.message) and mf.CREMAD_RAW_MISSING_VIDEO in str(warning.message)
    for ds in (train, test):
        expected = [CREMAD_ORDER[c.name.split("_")[2]] for c in ds.clips]
        assert ds.labels().tolist() == expected
    # a different seed gives a different (but again complete and disjoint) split
    splits = {tuple(sorted(c.name for c in load(CremaD, roots["cremad_raw"], split="test", seed=s)[0].clips)) for s in range(8)}
    assert len(splits) > 1


def test_cremad_raw_sample_decodes_flv(roots):
    ds, _ = load(CremaD, roots["cremad_raw"], split="train", send="raw")
    feats, _ = load(CremaD, roots["cremad_raw"], split="train")
    for i, clip in enumerate(ds.clips):
        raw = ds.sample(i)
        # 1.5 s FLV at 1 fps: frames at 0 s and 1 s, grey level of this clip
        assert raw.tensors["frames"].shape == (2, 32, 32, 3)
        np.testing.assert_allclose(frame_levels(raw), [mf.CREMAD_RAW_CLIPS[clip.name]] * 2, atol=3)
        assert raw.tensors["waveform"].shape == (int(mf.CREMAD_WAV_SECONDS * 16000),)
        f = feats.sample(i)
        assert f.tensors["audio"].shape == (1 + int(mf.CREMAD_WAV_SECONDS * 16000) // 160, 13)
        assert f.tensors["video"].shape == (2, 1, 32, 32)
        node = to_features(raw.tensors, feats.features)
        assert all(np.array_equal(node[k], f.tensors[k]) for k in ("audio", "video"))


def test_cremad_actor_split(roots):
    for root in (roots["cremad_raw"], roots["cremad_pre"]):
        train, w_train = load(CremaD, root, split="train", split_mode="actor")
        test, w_test = load(CremaD, root, split="test", split_mode="actor")
        actors_train = {c.name.split("_")[0] for c in train.clips}
        actors_test = {c.name.split("_")[0] for c in test.clips}
        assert actors_train.isdisjoint(actors_test)
        # the dropped clip of actor 1004 belongs to the split that warned about it
        (actors_test if w_test else actors_train).add("1004")
        assert len(w_train) + len(w_test) == 1
        # 4 actors listed (1001-1004): round(0.2 * 4) = 1 test actor, with all its clips
        assert len(actors_test) == 1 and len(actors_train) == 3
        assert actors_train.isdisjoint(actors_test)
        for ds in (train, test):
            assert ds.labels().tolist() == [CREMAD_ORDER[c.name.split("_")[2]] for c in ds.clips]
        half, w_test = load(CremaD, root, split="test", split_mode="actor", test_fraction=0.5)
        half_train, _ = load(CremaD, root, split="train", split_mode="actor", test_fraction=0.5)
        a_test = {c.name.split("_")[0] for c in half.clips}
        a_train = {c.name.split("_")[0] for c in half_train.clips}
        (a_test if w_test else a_train).add("1004")
        assert a_test.isdisjoint(a_train) and len(a_test) == 2 and len(a_train) == 2


def test_cremad_preprocessed_pooled_sample_split(roots):
    train, _ = load(CremaD, roots["cremad_pre"], split="train", split_mode="sample", seed=3)
    test, _ = load(CremaD, roots["cremad_pre"], split="test", split_mode="sample", seed=3)
    listed = {n for n, _ in mf.CREMAD_TRAIN_ROWS + mf.CREMAD_TEST_ROWS}
    got = {c.name for c in train.clips} | {c.name for c in test.clips}
    assert got == listed - {mf.CREMAD_PRE_MISSING}
    assert not {c.name for c in train.clips} & {c.name for c in test.clips}


def test_cremad_layout_detection_and_errors(roots, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(roots["cremad_pre"], both)
    shutil.copytree(roots["cremad_raw"] / "VideoFlash", both / "VideoFlash")
    assert cremad_mod.detect_layout(both) == "preprocessed"
    assert cremad_mod.detect_layout(both, "raw") == "raw"
    with pytest.raises(ValueError, match="VideoFlash/"):
        CremaD(roots["cremad_pre"], layout="raw")
    with pytest.raises(ValueError, match="train.csv"):
        CremaD(roots["cremad_raw"], layout="preprocessed")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CremaD(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no CREMA-D layout.*AudioWAV/"):
        CremaD(tmp_path / "empty")
    with pytest.raises(ValueError, match="'train' and 'test'"):
        CremaD(roots["cremad_pre"], split="val")


def test_cremad_bad_csv_row(tmp_path):
    mf.write_text(tmp_path / "train.csv", ["1001_DFA_ANG_XX,ANG", "1001_DFA_XYZ_XX,XYZ"])
    with pytest.raises(ValueError, match=r"train.csv:2: unknown emotion 'XYZ'"):
        cremad_mod.read_split_csv(tmp_path / "train.csv")
    mf.write_text(tmp_path / "h.csv", ["name,label", "1001_DFA_ANG_XX,ANG"], bom=True, crlf=True)
    assert cremad_mod.read_split_csv(tmp_path / "h.csv") == [("1001_DFA_ANG_XX", 5)]


def test_cremad_available(roots, tmp_path):
    assert cremad_mod.available(None) == (False, "no --root given")
    ok, why = cremad_mod.available(str(roots["cremad_raw"]))
    assert ok and "raw" in why
    ok, why = cremad_mod.available(str(roots["cremad_pre"]))
    assert ok and "preprocessed" in why
    ok, why = cremad_mod.available(str(tmp_path))
    assert not ok and why == f"{tmp_path}: no AudioWAV/ folder or train.csv found"
    ok, why = cremad_mod.available(str(tmp_path / "x"))
    assert not ok and "no such folder" in why


# =========================================================================== AVE


@pytest.mark.parametrize("layout", ["ave_raw", "ave_pre"])
def test_ave_classes_and_labels(roots, layout):
    ds, caught = load(AVE, roots[layout], split="train")
    assert ds.layout == ("raw" if layout == "ave_raw" else "preprocessed")
    # first appearance in testSet.txt (Dog, Church bell), then trainSet.txt, then valSet.txt
    assert ds.class_names == ["Dog", "Church bell", "Acoustic guitar", "Frying (food)"]
    assert ds.num_classes == 4 and ds.name == "ave"
    # vid_a kept once (its first row), vid_missing dropped with one warning
    assert [c.name for c in ds.clips] == ["vid_a", "vid_b", "vid_c"]
    assert ds.labels().tolist() == [1, 2, 0]
    assert (ds.clips[0].entry.start, ds.clips[0].entry.end, ds.clips[0].entry.quality) == (1.0, 3.0, "good")
    assert len(caught) == 1 and "1 listed clip" in str(caught[0].message) and "vid_missing" in str(caught[0].message)
    alpha, _ = load(AVE, roots[layout], split="train", class_order="alphabetical")
    assert alpha.class_names == ["Acoustic guitar", "Church bell", "Dog", "Frying (food)"]
    assert alpha.labels().tolist() == [1, 0, 2]
    test, caught = load(AVE, roots[layout], split="test")
    assert test.labels().tolist() == [0, 1, 0] and caught == []
    val, _ = load(AVE, roots[layout], split="val")
    assert val.labels().tolist() == [2, 3] and [c.name for c in val.clips] == ["vid_v1", "vid_v2"]


def test_ave_raw_time_cut(roots):
    raw, _ = load(AVE, roots["ave_raw"], split="train", send="raw")
    s = raw.sample(0)
    assert s.meta == {"clip": "vid_a"} and s.label == 1
    # the 4 s clip annotated 1..3: 2 frames at 1 fps (seconds 1 and 2), ~2 s of audio
    assert s.tensors["frames"].shape == (2, 32, 32, 3)
    np.testing.assert_allclose(frame_levels(s), [mf.ave_level("vid_a", 1.0), mf.ave_level("vid_a", 2.0)], atol=3)
    wave = s.tensors["waveform"]
    assert abs(wave.size - 32000) <= 640
    assert abs(float(np.sqrt(np.mean(wave**2))) - 0.4 / np.sqrt(2)) < 0.03
    feats, _ = load(AVE, roots["ave_raw"], split="train")
    f = feats.sample(0)
    assert f.tensors["video"].shape == (2, 1, 32, 32)
    assert f.tensors["audio"].shape == (1 + wave.size // 160, 13)
    node = to_features(s.tensors, feats.features)
    assert all(np.array_equal(node[k], f.tensors[k]) for k in ("audio", "video"))
    one = raw.sample(1)  # vid_b: 1 s clip annotated 0..1, one frame
    assert one.tensors["frames"].shape == (1, 32, 32, 3)
    np.testing.assert_allclose(frame_levels(one), [mf.ave_level("vid_b", 0.0)], atol=3)


def test_ave_preprocessed_sample(roots):
    cfg = FeatureConfig(audio="logmel", channels=3, image_size=16)
    ds, _ = load(AVE, roots["ave_pre"], split="test", features=cfg)
    for i, clip in enumerate(ds.clips):
        s = ds.sample(i, split="eval")
        assert s.split == "eval" and s.meta == {"clip": clip.name}
        assert s.tensors["audio"].shape == (1 + 8000 // 160, 40)
        assert s.tensors["video"].shape == (mf.AVE_PRE_FRAMES, 3, 16, 16)
        level = mf.ave_level(clip.name, 0.0) / 255.0
        np.testing.assert_allclose(s.tensors["video"][:, 0].mean(), (level - 0.485) / 0.229, atol=0.05)
    raw, _ = load(AVE, roots["ave_pre"], split="test", features=cfg, send="raw")
    r = raw.sample(2)
    direct = {"audio": audio_features(r.tensors["waveform"], 16000, cfg), "video": frame_features(r.tensors["frames"], cfg)}
    assert all(np.array_equal(direct[k], ds.sample(2).tensors[k]) for k in ("audio", "video"))


def test_ave_strict_and_layout_errors(roots, tmp_path):
    with pytest.raises(ValueError, match=r"1 listed clip\(s\).*AVE/vid_missing.mp4"):
        AVE(roots["ave_raw"], split="train", strict=True)
    with pytest.raises(ValueError, match=r"1 listed clip\(s\).*Audios/vid_missing.wav"):
        AVE(roots["ave_pre"], split="train", strict=True)
    with pytest.raises(ValueError, match="Audios/"):
        AVE(roots["ave_raw"], layout="preprocessed")
    with pytest.raises(ValueError, match="AVE/"):
        AVE(roots["ave_pre"], layout="raw")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        AVE(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="trainSet.txt"):
        AVE(tmp_path / "empty")
    both = tmp_path / "both"
    shutil.copytree(roots["ave_pre"], both)
    shutil.copytree(roots["ave_raw"] / "AVE", both / "AVE")
    assert ave_mod.detect_layout(both) == "preprocessed" and ave_mod.detect_layout(both, "raw") == "raw"


def test_ave_list_parsing(tmp_path):
    mf.write_text(tmp_path / "a.txt", [mf.AVE_HEADER, "Dog&x&good&0&10", "", "Race car, auto racing&y&bad&2.5&7"], bom=True, crlf=True)
    entries = ave_mod.read_list(tmp_path / "a.txt")
    assert [(e.category, e.video_id, e.quality, e.start, e.end) for e in entries] == [
        ("Dog", "x", "good", 0.0, 10.0),
        ("Race car, auto racing", "y", "bad", 2.5, 7.0),
    ]
    mf.write_text(tmp_path / "b.txt", ["Dog&x&good&0"])
    with pytest.raises(ValueError, match=r"b.txt:1: expected 5 '&'-separated fields"):
        ave_mod.read_list(tmp_path / "b.txt")


def test_ave_available(roots, tmp_path):
    assert ave_mod.available(None) == (False, "no --root given")
    assert ave_mod.available(str(roots["ave_raw"]))[0]
    assert ave_mod.available(str(roots["ave_pre"]))[0]
    ok, why = ave_mod.available(str(tmp_path))
    assert not ok and "trainSet.txt" in why and str(tmp_path) in why


@pytest.mark.parametrize("send", ["features", "raw"])
def test_samples_cross_the_wire(roots, send):
    """A data-set sample (raw or features) encodes and decodes to the same tensors and label."""
    from edge_runtime.wire import decode, encode_sample

    for cls, root in ((CremaD, roots["cremad_raw"]), (AVE, roots["ave_raw"])):
        ds, _ = load(cls, root, split="train", send=send)
        s = ds.sample(0)
        s.device, s.seq = "d", 7
        got = decode([bytes(f) for f in encode_sample(s)], num_classes=ds.num_classes, device="d")
        assert got.label == s.label and got.seq == 7 and set(got.tensors) == set(s.tensors)
        assert all(np.array_equal(got.tensors[k], s.tensors[k]) and got.tensors[k].dtype == s.tensors[k].dtype for k in s.tensors)
