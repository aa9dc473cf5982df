"""Converters from other frameworks' weights to the model zoo's variables.

`sap_jax.convert.torchvision`: torchvision ResNet-18/34/50 and ViT-B/16 state dicts
(as numpy arrays) → ``{"params": …, "batch_stats": …}`` of `sap_jax.models`.
"""
