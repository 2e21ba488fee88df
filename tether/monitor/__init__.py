"""Watching a run: alarms over the metric stream, TensorBoard/W&B logging, held-out evaluation during training,
the HTML report, and progress bars that stay quiet off a terminal.

Importing this package is cheap (no torch, no matplotlib); each module imports what it needs.
"""
