"""DNA enhancer design: regulatory-region data, oracles, motif rewards (JASPAR: the ``dna`` extra), metrics."""
