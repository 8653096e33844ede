"""Labels: class maps, annotation file formats and label sources (rasters at any mpp)."""
