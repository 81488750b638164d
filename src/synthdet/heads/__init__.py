"""Heads: small scikit-learn estimators on cached features (MLP probes, logistic regression, layer-wise fusion),
registered by name in :data:`synthdet.heads.probes.HEADS`, saved as safetensors + JSON parameters."""
