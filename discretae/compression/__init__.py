"""Layer 4, real files from code grids: the context prior, the ``.dae`` archive format,
and the codec that entropy-codes code grids with constriction."""
