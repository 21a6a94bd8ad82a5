"""Stage 3, predict: seam-free tiled inference, in memory, streamed file to file, or on dask."""
