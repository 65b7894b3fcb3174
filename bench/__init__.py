"""cicb's benchmark: ``make bench`` (see run.py)."""
