"""sn_core: a fast, exact Switchable Normalization library (pure PyTorch)."""
