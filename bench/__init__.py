"""Benchmarks: dicomhub side by side with Orthanc on the same machine (``make bench``).

Not part of the test suite; see ``docs/benchmarks.md``.
"""
