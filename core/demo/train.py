"""Train the demo land-cover U-Net on synthetic scenes: seeded, reproducible, CPU minutes.

``seamline train-demo`` runs :func:`train_demo`; its output (weights under 1 MB plus a JSON
sidecar with band statistics, class names and colours, receptive field and held-out mIoU)
ships in ``core/assets`` and loads offline with ``load_model("demo")``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from seamline.core.demo.synthetic import BANDS, CLASS_COLORS, CLASSES, make_scene
from seamline.core.demo.unet import UNet
from seamline.core.errors import InvalidArgumentError
from seamline.core.metrics import confusion_matrix, iou_per_class
from seamline.core.models.geometry import measure_geometry
from seamline.core.models.modelio import SegmentationModel, save_model
from seamline.core.prepare.bandstats import fit_band_stats, normalise

__all__ = [
    "train_demo",
    "evaluate",
    "held_out_predictions",
    "held_out_scenes",
    "demo_calibration",
    "HELD_OUT_SEEDS",
]

TRAIN_SEEDS = tuple(range(100, 116))
HELD_OUT_SEEDS = (900, 901, 902, 903)
MODEL_CLASS = "seamline.core.demo.unet:UNet"


def _scenes(seeds, size: int, rng: np.random.Generator | None):
    """Scenes with mild seasonal and radiometric variety for training; plain summer otherwise."""
    for seed in seeds:
        jitter = rng is not None
        yield make_scene(
            size, size, seed=seed,
            season=float(rng.uniform(-0.3, 0.3)) if jitter else 0.0,
            gain=float(rng.uniform(0.95, 1.05)) if jitter else 1.0,
        )  # fmt: skip


def held_out_scenes(*, size: int = 512) -> Iterator[tuple[xr.DataArray, np.ndarray]]:
    """``(scene, labels)`` of each held-out synthetic scene: evaluation data for a model that
    reads the synthetic bands (``quantization_report(..., evaluation=held_out_scenes())``)."""
    for scene, labels in _scenes(HELD_OUT_SEEDS, size, None):
        yield scene, labels.values


def demo_calibration(model: SegmentationModel) -> xr.DataArray:
    """A synthetic 512 x 512 scene (a training seed, not a held-out one): the demo model's
    INT8 calibration. Any other model must be given a scene of its own data (synthetic
    scenes in the same band names say nothing of what that model will see)."""
    if model.name != "demo":
        raise InvalidArgumentError(
            f"Model {model.name!r} needs a calibration scene for INT8, a scene of the data it "
            f"will predict with its bands ({', '.join(model.bands)}): pass --calibration SCENE "
            "(calibration= in Python)."
        )
    return make_scene(512, 512, seed=100)[0]


def held_out_predictions(
    model: SegmentationModel, *, size: int = 512
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(labels, predicted class ids)`` of ``model`` on each held-out synthetic scene."""
    from seamline.core.predict.tiling import predict_tiled

    for scene, labels in _scenes(HELD_OUT_SEEDS, size, None):
        x = normalise(scene, model.stats).values
        logits = predict_tiled(model.module, x, tile_size=256, overlap=64, blend="crop",
                               align=model.align, device="cpu")  # fmt: skip
        yield labels.values, logits.argmax(axis=0)


def evaluate(model: SegmentationModel, *, size: int = 512) -> dict[str, float]:
    """mIoU and per-class IoU of ``model`` on the held-out synthetic scenes."""
    cm = np.zeros((len(model.classes),) * 2, dtype=np.int64)
    for labels, predicted in held_out_predictions(model, size=size):
        cm += confusion_matrix(labels, predicted, len(model.classes))
    iou = iou_per_class(cm)
    return {"miou": float(np.nanmean(iou)),
            **{f"iou_{name}": float(v) for name, v in zip(model.classes, iou, strict=True)}}


def train_demo(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int = 600,
    batch_size: int = 16,
    crop: int = 128,
    scene_size: int = 384,
    log: Callable[[str], None] = print,
) -> SegmentationModel:
    """Train the demo U-Net and save it (``out`` is the ``.pt`` path; the sidecar goes beside)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    pairs = list(_scenes(TRAIN_SEEDS, scene_size, rng))
    stats = fit_band_stats([s for s, _ in pairs])
    x_all = torch.from_numpy(np.stack([normalise(s, stats).values for s, _ in pairs]))
    y_all = torch.from_numpy(np.stack([lab.values.astype(np.int64) for _, lab in pairs]))
    net = UNet(len(BANDS), len(CLASSES))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(ignore_index=255)
    net.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(pairs), batch_size))
        r, c = (torch.from_numpy(rng.integers(0, scene_size - crop + 1, batch_size))
                for _ in range(2))
        rows = r[:, None] + torch.arange(crop)  # gather random crops without a Python loop
        cols = c[:, None] + torch.arange(crop)
        xb = x_all[idx[:, None, None, None], torch.arange(len(BANDS))[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
        yb = y_all[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
        flip = rng.random(2) < 0.5
        dims = [d for d, f in zip((-2, -1), flip, strict=True) if f]
        if dims:
            xb, yb = xb.flip(dims), yb.flip(dims)
        loss = loss_fn(net(torch.nan_to_num(xb)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s")
    net.eval()
    model = SegmentationModel(
        module=net, bands=BANDS, classes=CLASSES, colors=tuple(CLASS_COLORS), stats=stats,
        align=net.align, receptive_radius=measure_geometry(net, len(BANDS)).reach, name="demo",
        metadata={"init": {"bands": len(BANDS), "classes": len(CLASSES)},
                  "training": {"seed": seed, "steps": steps, "batch_size": batch_size,
                               "crop": crop, "scenes": len(pairs), "scene_size": scene_size}},
    )
    scores = evaluate(model)
    model.metadata["held_out"] = {"seeds": list(HELD_OUT_SEEDS), **scores}
    model.metadata["training"]["seconds"] = round(time.perf_counter() - start, 1)
    log(f"held-out mIoU {scores['miou']:.3f}")
    save_model(model, Path(out), model_class=MODEL_CLASS)
    return model
