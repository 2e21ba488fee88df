"""Text → token batches: file readers with per-record validation, SFT examples, preference pairs. No model code."""

from tether.data.readers import load_prompts, read_prompts, read_records, render_chat

__all__ = ["load_prompts", "read_prompts", "read_records", "render_chat"]
