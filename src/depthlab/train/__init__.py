"""Packs -> engine: runs of one shape grouped into packs (`packs`), and the one trainer (`engine`) with its
optimizer (`optim`) and its recipe (`recipe`: the version and the table of training constants)."""
