"""Molecules: graph diffusion (GDSS), RDKit rewards, graph value networks."""
