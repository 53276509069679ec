"""Training: configs, losses, checkpoints (``load_run``), the trainer and ``nerfhead train``."""
