"""Benchmarks of the warehouse loader against S3 (moto behind a delaying proxy) and a local
directory; run them with ``python -m benchmarks.run`` (see ``docs/performance.md``).
"""
