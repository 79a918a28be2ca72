"""Molecules: graph diffusion (GDSS), RDKit rewards, graph value networks (the ``molecules`` extra)."""
from ...extras import require

require("rdkit", extra="molecules", feature="svdd_lightning.domains.molecules")
