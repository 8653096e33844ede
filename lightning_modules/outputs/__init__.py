"""What a run writes: mask TIFFs, overlays and GeoJSON, and slide-level evaluation."""
