"""Replay policies: how each update's replay batch is drawn from the buffer (one file each)."""
