"""Data side of wsiseg, in the order pixels flow: slides → labels → sampling → views →
datasets (`datasets`, `wsi`, `tiger`, `wholeslide`); `synthetic` makes the benchmark slides."""
