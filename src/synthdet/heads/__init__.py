"""Heads: scikit-learn binary classifiers on cached features, by kind (a card's ``head``).

- :mod:`~synthdet.heads.base`: what every head is, :data:`~synthdet.heads.base.HEADS`, and the one way to make a head,
  :func:`~synthdet.heads.base.create_head` (from a card and its tensors: :func:`~synthdet.heads.base.head_from_state`);
- :mod:`~synthdet.heads.mlp`: torch heads — :class:`~synthdet.heads.mlp.TorchProbe` with the optimisation settings
  and epoch loop they share, and the ``linear``, ``residual`` and ``deep`` MLPs;
- :mod:`~synthdet.heads.logreg`: the ``logreg`` head, standardised features + logistic regression;
- :mod:`~synthdet.heads.fusion`: the ``fusion`` head, a learned mixture of a backbone's blocks.
"""
