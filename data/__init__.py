"""Dataset configs (yaml), hyperparameter files (hyps/) and the built-in synthetic `shapes` dataset."""
