"""edge-runtime: streaming edge incremental learning for multimodal device streams (docs/design.md)."""

__version__ = "0.1.0"
