"""The sweeps' unimodal columns follow the configuration's modalities (the any-sensor issue) and keep the
audio-visual sweeps' columns, so their committed CSVs stay comparable."""

from __future__ import annotations

from benchmarks import balance_sweep, buffer_sweep
from benchmarks.common import modality_columns, unimodal_fields
from edge_runtime.core.config import load_config
from tests.support.nodeproc import ROOT


def test_audio_visual_columns_are_the_old_ones():
    unimodal = unimodal_fields(ROOT / "configs" / "avdigits.yaml")
    assert unimodal == [("audio_only_accuracy", "audio-only head"), ("visual_only_accuracy", "visual-only head")]
    assert buffer_sweep.fields(unimodal) == buffer_sweep.FIELDS
    assert balance_sweep.fields([c for c, _ in unimodal]) == balance_sweep.FIELDS


def test_watch_columns_name_its_modalities_and_the_row_fills_them():
    config = load_config(ROOT / "configs" / "watch.yaml")
    unimodal = unimodal_fields(ROOT / "configs" / "watch.yaml")
    assert [c for c, _ in unimodal] == ["accel_only_accuracy", "gyro_only_accuracy"]
    row = modality_columns(config, {"accel": 0.5, "gyro": 0.25})
    assert {c: row[c] for c, _ in unimodal} == {"accel_only_accuracy": 0.5, "gyro_only_accuracy": 0.25}
    assert "visual_only_accuracy" not in row
    assert unimodal_fields(None, ["modalities={a: {kind: vector, channels: 2}, cam: {kind: frames}}"]) == [
        ("a_only_accuracy", "a-only head"), ("visual_only_accuracy", "visual-only head")]
