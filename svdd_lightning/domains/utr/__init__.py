"""RNA 5'UTR design: data, rewards, oracles (ViennaRNA stability and the Optimus reader: the ``rna`` extra)."""
