"""Stage 0, data: open rasters and AOIs, write rasters safely, input budgets, server paths."""
