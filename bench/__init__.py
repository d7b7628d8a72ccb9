"""Benchmarks, run by hand with ``make bench`` (never by ``make test``)."""
