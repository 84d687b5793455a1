"""Benchmarks that print their figures (run each as `python bench/<name>.py`)."""
