"""Per-sample scores.  ``mbs(p_1, p_2)`` is the Modality Balance Score of the MBS paper; ``spread(p)``
its generalisation (ours) to N modalities."""

from edge_runtime.learning.policies.scoring.mbs import confidence_spread, mbs, mbs_deviation, spread

__all__ = ["mbs", "mbs_deviation", "spread", "confidence_spread"]
