"""Features: running a backbone over images once (one streaming worker pool, cached views) and the verified,
locked, resumable on-disk feature store keyed by image hash + backbone + weights + preprocessing."""
