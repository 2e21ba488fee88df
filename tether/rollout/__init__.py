"""Prompts → sampled completions (generate.py) → no-grad scoring passes (score.py)."""
