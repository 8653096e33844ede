"""Slide I/O: the one `Slide` reader, its decoded-tile cache and TIFF usability checks."""
