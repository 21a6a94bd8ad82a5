"""One in-memory prediction for ``benchmarks/out_of_core.py``, in its own process.

``python benchmarks/out_of_core_peer.py NAME SRC OUT``: reads SRC whole, normalises it with
the demo model's statistics, predicts it with NAME (``seamline in-memory``: ``predict_scene``;
``seed recipe``; ``MONAI sliding window``: Gaussian, batch 1), writes the class ids as a tiled
GeoTIFF and prints its seconds and peak RSS as JSON.
"""

from __future__ import annotations

import json
import sys
import time

start = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from seamline.core.data.io import open_raster, write_raster  # noqa: E402
from seamline.core.hardware import peak_rss_bytes  # noqa: E402
from seamline.core.models.modelio import load_model  # noqa: E402
from seamline.core.predict.blocks import as_prediction, class_ids, model_input  # noqa: E402
from seamline.core.predict.scene import predict_scene  # noqa: E402


def main() -> None:
    name, src, out = sys.argv[1:4]
    model = load_model("demo")
    scene = open_raster(src).load()
    if name == "seamline in-memory":
        classes = predict_scene(model, scene, tile_size=512, overlap=64, batch_size=1).values
    else:
        image = np.nan_to_num(model_input(model, scene), nan=0.0)
        if name == "seed recipe":
            from seed_recipe import seed_predict

            logits = seed_predict(model.module, image, 512, 64)
        else:
            from monai.inferers import sliding_window_inference

            with torch.inference_mode():
                logits = sliding_window_inference(
                    torch.from_numpy(image)[None], (512, 512), 1, model.module,
                    overlap=64 / 512, mode="gaussian")[0].numpy()  # fmt: skip
        classes = class_ids(logits)
    write_raster(as_prediction(classes, scene, model), out)
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "peak_rss_mb": peak_rss_bytes() / 2**20}))  # fmt: skip


if __name__ == "__main__":
    main()
