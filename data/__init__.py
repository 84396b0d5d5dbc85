"""Data sets and loaders (see data_loader.py)."""
