"""agent-cir index_cmd (being written)."""
