"""edge-runtime: streaming edge incremental learning with modality-balanced sample selection."""

__version__ = "0.1.0"
