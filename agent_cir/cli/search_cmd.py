"""agent-cir search_cmd (being written)."""
