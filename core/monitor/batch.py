"""Drift checks of many scenes as dask tasks, on any dask scheduler or cluster."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import replace

import dask

from seamline.core.data.io import open_raster
from seamline.core.monitor.baseline import Baseline
from seamline.core.monitor.check import DriftResult, check

__all__ = ["check_many"]


def _check_path(
    path: str, baseline: Baseline, model: object, keep_prediction: bool
) -> DriftResult:
    """:func:`seamline.core.monitor.check.check` on the scene at ``path``, read where the task
    runs."""
    result = check(open_raster(path).load(), baseline, model=model)
    return result if keep_prediction else replace(result, prediction=None)


def check_many(
    scenes: Sequence[str | os.PathLike],
    baseline: Baseline,
    *,
    model: object = None,
    client: object = None,
    keep_predictions: bool = False,
) -> list[DriftResult]:
    """:func:`seamline.core.monitor.check.check` of every scene file against ``baseline``, as
    dask tasks.

    Each task reads its scene where it runs (the workers must reach the paths), the baseline
    and the model travel once. ``client`` is a ``dask.distributed`` client (default: the
    active dask scheduler). Results come back in the order of ``scenes``; their
    ``prediction`` rasters are dropped unless ``keep_predictions`` (they are scene-sized).
    """
    shared = {name: dask.delayed(value, name=f"seamline-{name}-{uuid.uuid4().hex[:8]}",
                                 traverse=False)
              for name, value in (("baseline", baseline), ("model", model))}  # fmt: skip
    tasks = [
        dask.delayed(_check_path, pure=False)(str(path), shared["baseline"], shared["model"],
                                              keep_predictions)
        for path in scenes
    ]  # fmt: skip
    return list(dask.compute(*tasks, scheduler=client))
