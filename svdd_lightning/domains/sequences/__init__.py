"""Biological sequences (DNA, RNA), shared by the DNA and 5'UTR domains: k-mer metrics, oracle networks as
rewards, and the training of the masked diffusion model and of sequence classifiers."""
