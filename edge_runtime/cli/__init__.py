"""Layer 8, the top: the command lines (the only place with argparse); the demos may import device_sim."""
