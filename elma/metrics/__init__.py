"""Evaluation metrics (standard library only)."""
