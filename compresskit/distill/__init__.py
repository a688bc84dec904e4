"""Distillation building blocks: loss configs and functions, layer mapping, projectors,
forward hooks, and the objective the distill pass hands to the training loop.

Nothing here owns a training loop (that is :mod:`compresskit.training.loop`), and nothing
here is left on the model afterwards: hooks are removed and projectors dropped.
"""
