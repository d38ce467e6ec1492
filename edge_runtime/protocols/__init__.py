"""Experiment protocols that reuse the runtime's policies outside the stream (the paper's offline Experiment B)."""
