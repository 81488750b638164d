"""Datasets: manifests (folders, CSVs, indexing and probing files), split plans grouped by content hash and
near-duplicate, provenance (which rows a model has seen), the social-media normalisation of a pool, augmentation
presets and the deterministic perturbations that robustness slices and stability checks apply."""
