"""Performance benchmarks for neurosurgeon ratios against plain torch and NeuroSurgeon 0.1.0.

Run ``python -m benchmarks.run`` (full, writes ``benchmarks/RESULTS.md``) or
``python -m benchmarks.run --smoke`` (tiny shapes, one repeat, a few seconds).
"""
