"""Benchmarks of the three service paths against same-run baselines.

``python -m bench --full`` (``make bench``) measures ingest, flush and collect at
1k, 10k and 100k items, each side in its own child process (so its peak RSS is its
own), plus one end-to-end run of 10k invoices through the real processes. It writes
``bench/results.json`` and prints the table. ``--quick`` runs the same code at a
small size so the suite cannot rot (``tests/bench/test_bench_quick.py``).
"""
