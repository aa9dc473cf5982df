"""Experiment configs: one module per table/ablation; each docstring holds its command."""
