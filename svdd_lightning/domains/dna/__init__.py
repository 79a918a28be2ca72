"""DNA enhancer design: regulatory-region data, oracles, motif rewards, metrics."""
