"""Layer 5: what an operator sees: metrics, status, history, report."""
