"""Detectors: the saved, self-describing unit users pass around. ``card`` (the JSON card and the registry of kinds),
``detector`` (a probe: backbone + head), ``ensemble``, ``calibrate`` (thresholds, calibration, uncertainty bands),
``scoring`` (images in memory), ``evidence`` (EXIF, JPEG tables, C2PA), ``assess`` (a verdict in words) and
``loading`` (the one place a folder becomes a runnable detector)."""
