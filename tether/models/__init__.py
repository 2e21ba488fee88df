"""Everything that touches transformers: loading, forwards with correct positions, scalar heads."""
