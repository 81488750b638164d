"""Evaluation: Task A metrics as pure functions (with bootstrap intervals, per group) and evaluation runs (one detector
on one labelled dataset, clean and under robustness slices, every figure labelled with the rows it was computed on)."""
