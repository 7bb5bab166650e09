"""The per-query trace: ``model`` (the typed records, loading 1.0-3.0), ``build`` (a record from a finished
query), ``io`` (the JSONL writer and readers)."""
