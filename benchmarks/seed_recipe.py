"""The seed recipe Seamline replaces: the baseline every tiling benchmark prints beside ours.

Written as the seed notebook did it, flaws kept on purpose: zero-padded edge tiles, a linear
ramp that also tapers to zero at the raster's outer border, corner ramps overwritten instead
of multiplied, a batch of one, and a host copy per tile.
"""

from __future__ import annotations

import numpy as np
import torch


def seed_predict(model, image: np.ndarray, tile: int = 512, overlap: int = 64) -> np.ndarray:
    """Tile, predict one tile at a time, blend with a linear ramp, divide by the weights."""
    bands, h, w = image.shape
    stride = tile - overlap
    out = None
    weights = np.zeros((h, w), dtype=np.float32)
    ramp = np.ones((tile, tile), dtype=np.float32)
    edge = np.linspace(0, 1, overlap, dtype=np.float32)
    ramp[:overlap, :] = edge[:, None]  # rows: top ramp
    ramp[-overlap:, :] = edge[::-1, None]
    ramp[:, :overlap] = edge[None, :]  # columns overwrite the corners
    ramp[:, -overlap:] = edge[None, ::-1]
    model.eval()
    for y in range(0, h, stride):
        for x in range(0, w, stride):
            patch = np.zeros((bands, tile, tile), dtype=np.float32)  # zero padding at edges
            chunk = image[:, y : y + tile, x : x + tile]
            patch[:, : chunk.shape[1], : chunk.shape[2]] = chunk
            with torch.no_grad():
                pred = model(torch.from_numpy(patch)[None])[0].cpu().numpy()  # host copy per tile
            if out is None:
                out = np.zeros((pred.shape[0], h, w), dtype=np.float32)
            ch, cw = chunk.shape[1:]
            out[:, y : y + ch, x : x + cw] += pred[:, :ch, :cw] * ramp[:ch, :cw]
            weights[y : y + ch, x : x + cw] += ramp[:ch, :cw]
    return out / np.maximum(weights, 1e-8)
