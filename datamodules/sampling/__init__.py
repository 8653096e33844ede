"""Where to sample: the tile grid, tissue masks, class balancing, train order, eval shards."""
