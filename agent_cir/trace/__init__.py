"""The per-query trace: ``outputs`` (each stage's typed output), ``model`` (the ``Trace`` and its stage records),
``build`` (the trace of a finished or a running query), ``load`` (records from files: 3.0, 2.0, 1.0; salvage for
display), ``io`` (the JSONL writer and the one reader)."""
