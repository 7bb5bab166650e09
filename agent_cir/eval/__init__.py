"""Benchmarks: official-format loaders (``datasets``), official metrics (``metrics``), submission files
(``submission``), resumable runs (``runner.run_eval``) and run comparison (``compare``)."""
