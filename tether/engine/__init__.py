"""The run around a stage's maths, the same for every stage: checkpoints (``checkpoint``), the run directory and
resume rules (``run_dir``), graceful pre-emption (``preemption``), optimisers and schedules (``optim``), the metrics
log and the atomic model save (``outputs``), and the one run loop (``loop``). Nothing here knows a model family or a
loss."""
