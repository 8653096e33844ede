"""Studies: experiments x seeds on the same data, run one by one, aggregated by a bootstrap."""
