"""normsearch api layer (built out by its own issue)."""
