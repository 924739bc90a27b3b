"""Benchmarks of backuphub components; run each module with python -m."""
