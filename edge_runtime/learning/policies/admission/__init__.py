"""Admission policies: which incoming samples are trained on and offered to the buffer (one file each)."""
