"""Hyperparameter sweeps: Optuna proposes and prunes; every trial is an ordinary run."""
