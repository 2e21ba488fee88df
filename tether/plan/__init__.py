"""Planning a run before it starts: memory estimates and the micro-batch they allow. Arithmetic on model shapes only;
imports no model code."""
