"""Trainer callbacks shared by every method (timing, …)."""
