"""Planning a run's memory: the peak-memory estimate and the micro-batch it allows (``memory``: arithmetic on model
shapes, no model code), and redoing a step with a smaller micro-batch after an out-of-memory error (``oom``)."""
