"""Stage 1, prepare: align the AOI to the raster, clip, handle nodata, normalise with the
training baseline's band statistics; spectral indices."""
