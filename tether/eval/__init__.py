"""Evaluation: independent sentiment judges (``judges``) and bootstrap confidence intervals (``stats``)."""
