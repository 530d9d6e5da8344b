"""The model families, one folder each: the family's pipeline (its denoising algorithm) and what only it needs."""
