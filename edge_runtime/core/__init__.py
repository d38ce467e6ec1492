"""Layer 1, the bottom: what every part shares (samples, configuration, the input contract, features)."""
