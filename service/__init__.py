"""normsearch service layer (built out by its own issue)."""
