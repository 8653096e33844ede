"""Views: the patch geometry of each method (single, multi-magnification, dual, zoom)."""
