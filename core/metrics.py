"""Segmentation metrics from a confusion matrix (vectorised with ``np.bincount``)."""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou"]


def confusion_matrix(
    truth: np.ndarray, pred: np.ndarray, classes: int, *, ignore: int | None = 255
) -> np.ndarray:
    """``(classes, classes)`` counts, rows = truth, columns = prediction; ``ignore`` skipped."""
    truth = np.asarray(truth).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = (truth >= 0) & (truth < classes) & (pred >= 0) & (pred < classes)
    if ignore is not None:
        keep &= truth != ignore
    flat = truth[keep] * classes + pred[keep]
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union per class; NaN for a class absent from truth and prediction."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(truth: np.ndarray, pred: np.ndarray, classes: int) -> float:
    """Mean IoU over the classes present in truth or prediction."""
    return float(np.nanmean(iou_per_class(confusion_matrix(truth, pred, classes))))

