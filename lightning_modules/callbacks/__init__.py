"""Trainer callbacks shared by every method: resume, timing, divergence guard, slide writer."""
