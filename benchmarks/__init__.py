"""Benchmarks of ``lightning_prune``: each module is a script run as ``python -m benchmarks.<name>`` from the
repository root, writing its figures to ``benchmarks/results/<name>.json``.

What the scripts share (models, corpora, batching, quiet Trainers, seeding, measurement, tables, plots, run facts,
JSON) is in :mod:`benchmarks.harness`; the result tables of ``docs/RESULTS.md`` and the README are generated from
the JSON by ``python -m benchmarks.tables`` (:mod:`benchmarks.tables`).
"""
