"""Modality Balance Score (MBS paper, Section 4.1 and Algorithm 1 line 7; the learning step, step 3 (docs/design.md)).

``MBS(x) = p_audio / p_video``: the ratio of the per-modality confidences of the true class.
MBS near the centre m means both modalities contribute comparably; far above m the audio
modality dominates, far below it the video modality does.
"""

from __future__ import annotations

from typing import Literal

import torch

Deviation = Literal["ratio", "log"]


def _floating(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype.is_floating_point else t.to(torch.get_default_dtype())


def mbs(p_audio: torch.Tensor, p_video: torch.Tensor) -> torch.Tensor:
    """``MBS_i = p_i^a / p_i^v`` (MBS paper Eq. for MBS(x_t), Algorithm 1 line 7).

    ``p_video`` is clamped from below at the smallest positive normal number of its dtype
    (``torch.finfo(dtype).tiny``) so that a video confidence that underflowed to 0 gives a large
    finite score instead of inf/NaN.  Since ``p_audio <= 1`` the score stays finite
    (``<= 1 / tiny``).  Integer inputs are converted to the default float dtype.
    """
    p_audio = _floating(torch.as_tensor(p_audio))
    p_video = _floating(torch.as_tensor(p_video))
    tiny = torch.finfo(p_video.dtype).tiny
    return p_audio / p_video.clamp_min(tiny)


def mbs_deviation(score: torch.Tensor, center: float | torch.Tensor, deviation: Deviation = "ratio") -> torch.Tensor:
    """Modality balance deviation from the centre m (MBS paper Section 4.2, Algorithm 1 line 14/16).

    ``"ratio"``: ``|MBS - m|`` (the paper's).  ``"log"``: ``|log MBS - log m|``, symmetric in which
    modality dominates (MBS = m*r and m/r deviate equally).  For ``"log"`` both the score and the
    centre are clamped from below at ``torch.finfo(dtype).tiny`` so that a zero gives a large
    finite deviation rather than inf/NaN.
    """
    score = _floating(torch.as_tensor(score))
    c = torch.as_tensor(center, dtype=score.dtype, device=score.device)
    if deviation == "ratio":
        return (score - c).abs()
    if deviation == "log":
        tiny = torch.finfo(score.dtype).tiny
        return (score.clamp_min(tiny).log() - c.clamp_min(tiny).log()).abs()
    raise ValueError(f"deviation must be 'ratio' or 'log' (got {deviation!r})")
