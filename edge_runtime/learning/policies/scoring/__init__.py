"""Per-sample scores.  ``mbs(p_audio, p_video)`` is the Modality Balance Score of the MBS paper."""

from edge_runtime.learning.policies.scoring.mbs import mbs, mbs_deviation

__all__ = ["mbs", "mbs_deviation"]
