"""Training loop, distributed launch and checkpoints."""
