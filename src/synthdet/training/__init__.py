"""Training: fitting and calibrating detectors on cached features, cross-validation (k-fold and leave-one-group-out),
fine-tuning, ensembles, localizer training and the named recipes of the working notes. The top of the library: it
may use everything below, and nothing below uses it (detector kinds it defines are loaded by import path)."""
