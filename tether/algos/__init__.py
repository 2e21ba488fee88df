"""Training loops, one file per stage: ``sft``, ``rm``, ``ppo``; shared helpers in ``common``."""
