"""Stage 4, optimise: FP32 -> BF16 / INT8 with calibration, with measured size, latency and
agreement."""
