"""normsearch worker layer (built out by its own issue)."""
