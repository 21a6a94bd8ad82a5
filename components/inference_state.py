"""The state of the predict section: a run's choices, its result and the session's runs.

Params only (no Panel), so it is tested headless; :mod:`seamline.components.inference_view`
draws it. Runs go through :func:`seamline.core.serve.runs.run_inference` off the event loop.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import param
import torch
import xarray as xr

from seamline.core.errors import SeamlineError
from seamline.core.predict.plan import plan_overlap
from seamline.core.predict.tiling import Blend, TileGrid
from seamline.core.serve.cache import ModelCache
from seamline.core.serve.runs import ON_CALIBRATION_TILES, RunResult, RunSettings, run_inference
from seamline.core.vector.polygonize import polygonize

__all__ = ["InferenceState", "RunCancelled", "readable_runs", "READABLE", "RUN_COLUMNS", "SETTINGS"]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PROGRESS_HZ = 8
SETTINGS = ("tile_size", "overlap", "blend", "batch_size", "precision", "device")
"""The params a run's result depends on (besides the scene and the model)."""
RUN_COLUMNS = [
    "run",
    "backend",
    "seconds",
    "tile_ms_p50",
    "tile_ms_p95",
    "megapixels_per_s",
    "size_mb",
    "agreement_fp32",
]
KEPT_COLUMNS = [*RUN_COLUMNS, "agreement_on"]
"""The runs table's columns: those shown, and what the agreement was measured on."""
READABLE = {
    "run": ("Run", None),
    "backend": ("Backend", None),
    "seconds": ("Prediction (s)", 2),
    "tile_ms_p50": ("Tile p50 (ms)", 1),
    "tile_ms_p95": ("Tile p95 (ms)", 1),
    "megapixels_per_s": ("Mpx/s", 2),
    "size_mb": ("Model (MB)", 2),
    "agreement_fp32": ("Agreement with FP32 (%)", 2),
}
"""Each runs-table column as a person reads it: header with its unit, decimals shown."""


def readable_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table as a person reads it: plain headers with units, figures as text with
    fixed decimals (a table widget's default number format showed 0.44 s as "0"), agreement
    in percent, "-" where there is none."""
    shown = runs[RUN_COLUMNS].copy()
    shown["agreement_fp32"] = pd.to_numeric(shown["agreement_fp32"]) * 100
    for column, (_, decimals) in READABLE.items():
        if decimals is not None:
            values = pd.to_numeric(shown[column])
            shown[column] = [("-" if pd.isna(v) else f"{v:.{decimals}f}") for v in values]
    on_tiles = runs["agreement_on"] == ON_CALIBRATION_TILES  # auto's, not on this scene
    shown["agreement_fp32"] = shown["agreement_fp32"].astype(str) + np.where(
        on_tiles, " (calibration tiles)", ""
    )
    return shown.rename(columns={k: header for k, (header, _) in READABLE.items()})


class RunCancelled(SeamlineError):
    """The person pressed Cancel: the run stopped between two batches."""


class InferenceState(param.Parameterized):
    """Choices of a run, the latest result, and the runs of this session."""

    tile_size = param.Selector(objects=[128, 256, 512, 1024], default=256, label="Tile size")
    overlap = param.Integer(default=32, bounds=(0, 256), label="Overlap (px)")
    blend = param.Selector(objects=[b.value for b in Blend], default="cosine", label="Blend")
    batch_size = param.Integer(default=1, bounds=(1, 32), label="Batch size")
    precision = param.Selector(objects=["auto", "fp32", "bf16", "int8"], default="auto",
                               label="Precision",
                               doc="auto: the fastest backend that agrees with FP32 here.")
    device = param.Selector(objects=DEVICES, default="cpu", label="Device")
    show_grid = param.Boolean(default=False, label="Tile grid")
    show_polygons = param.Boolean(default=False, label="Class polygons")
    outlines = param.ClassSelector(
        class_=gpd.GeoDataFrame, allow_None=True,
        doc="The class polygons drawn on the map while show_polygons is on.",
    )  # fmt: skip
    scene = param.ClassSelector(class_=xr.DataArray, doc="The scene to predict.")
    model = param.String(doc="The model to predict with: a name or a model file.")
    result = param.ClassSelector(class_=RunResult, allow_None=True)
    runs = param.DataFrame(default=pd.DataFrame(columns=KEPT_COLUMNS))
    running = param.Boolean(default=False)
    done_tiles = param.Integer(default=0)
    total_tiles = param.Integer(default=0)
    phase = param.String(default="", doc='What runs now, e.g. "FP32 reference 1/2".')
    waited = param.Number(
        default=None, allow_None=True,
        doc="Wall seconds of the last Run: FP32 reference, model build and prediction.",
    )  # fmt: skip
    reference_seconds = param.Number(
        default=None, allow_None=True, doc="Seconds of the FP32 reference run, if one ran."
    )
    message = param.String(default="")
    seams = param.String(default="", doc="Why tiles may show seams with these choices.")

    def __init__(self, cache: ModelCache, **params) -> None:
        super().__init__(**params)
        self.cache = cache  # process-wide on purpose: models are quantized once
        self._results: dict[tuple[int, RunSettings], RunResult] = {}
        self._polygons: tuple[RunResult | None, gpd.GeoDataFrame | None] = (None, None)
        self._progress_at = 0.0
        self._cancel = threading.Event()
        self._started = 0.0
        self._auto_overlap: int | None = None  # the overlap the page chose, while it stands
        if "overlap" not in params:
            self._covering_overlap()
        self._seam_check()

    def settings(self) -> RunSettings:
        """The current choices as a plain, hashable value."""
        return RunSettings(**{name: getattr(self, name) for name in SETTINGS})

    @param.depends("model", watch=True)
    def _covering_overlap(self) -> None:
        """Start each model at the overlap that covers its receptive field (tiles agree with
        an untiled run); the person may change it, and hears why when that shows seams."""
        model = self.cache.get(self.model, precision=None)
        overlap, _ = plan_overlap(model, self.tile_size, self.blend)
        self._auto_overlap = min(overlap, self.param.overlap.bounds[1])
        self.overlap = self._auto_overlap

    @param.depends("tile_size", "blend", watch=True)
    def _follow_tiling(self) -> None:
        """The covering overlap follows the tile size and blend until the person sets one."""
        if self.overlap == self._auto_overlap:
            self._covering_overlap()

    @param.depends("model", "tile_size", "blend", "overlap", watch=True)
    def _seam_check(self) -> None:
        model = self.cache.get(self.model, precision=None)
        self.seams = " ".join(plan_overlap(model, self.tile_size, self.blend, self.overlap)[1])

    @param.depends("scene", "model", watch=True)
    def _new_scene(self) -> None:
        self._results.clear()
        self.param.update(result=None, runs=pd.DataFrame(columns=KEPT_COLUMNS), message="")

    def _check_cancelled(self) -> None:
        """Stop the run here (between batches, or while its model builds) after a Cancel."""
        if self._cancel.is_set():
            raise RunCancelled("Run cancelled: the previous results stay; press Run again.")

    def _progress(self, done: int, total: int) -> None:
        self._check_cancelled()
        # At most PROGRESS_HZ updates a second: each one is a message to the page, handled on
        # the server's event loop beside the prediction (one per tile cost up to 40 % of a
        # run of 400 small tiles on 2 cores).
        now = time.monotonic()
        if done < total and now - self._progress_at < 1 / PROGRESS_HZ:
            return
        self._progress_at = now
        self.param.update(done_tiles=done, total_tiles=total)

    def compute(
        self, settings: RunSettings | None = None, *, as_reference: bool = False
    ) -> RunResult:
        """The run for ``settings`` (default: the current choices), cached per parameter set
        and scene. A non-FP32 run is compared with an FP32 run of the scene for the agreement:
        the one with the same tiling if cached, else any cached one (tiling is seam-free, so
        it changes next to nothing), else one with the same tiling, run first (``as_reference``:
        it keeps the phase its caller set). An ``auto`` run, the default, waits for no FP32
        run: it is compared with a cached one, else carries the agreement auto measured."""
        settings = settings or self.settings()
        key = (id(self.scene), settings)  # cleared when the scene or the model changes
        if key not in self._results:
            reference, steps = None, 1
            cached = self._cached_fp32()
            quantized = self.cache.get(self.model, precision=None).precision != "fp32"
            if settings.precision == "auto" or quantized:  # no FP32 run for them: auto's own
                reference = cached[-1].classes if cached else None  # agreement, or none
            elif settings.precision != "fp32":
                steps = 1 if cached else 2
                self.phase = "FP32 reference 1/2" if steps == 2 else ""
                started = time.perf_counter()
                reference = self._fp32_reference(settings, cached)
                if steps == 2:
                    self.reference_seconds = time.perf_counter() - started
            if not as_reference:
                self.phase = f"{settings.precision.upper()} {steps}/{steps}"
            self._results[key] = run_inference(
                self.scene, settings, self.cache, model=self.model, reference=reference,
                progress=self._progress, notify=self._measuring, waiting=self._check_cancelled,
            )
        return self._results[key]

    def _measuring(self, what: str) -> None:
        if self.running:  # a cancelled run's measurement goes on after it ended
            self.phase = f"Auto: {what}"

    def _cached_fp32(self) -> list[RunResult]:
        """This scene's runs that ran FP32 (asked for, or picked by auto)."""
        return [
            result
            for (scene, _), result in self._results.items()
            if scene == id(self.scene) and result.backend == "fp32"
        ]

    def _fp32_reference(self, settings: RunSettings, cached: list[RunResult]) -> xr.DataArray:
        same_tiling = (id(self.scene), replace(settings, precision="fp32"))
        if same_tiling in self._results or not cached:
            return self.compute(same_tiling[1], as_reference=True).classes
        return cached[-1].classes

    def begin(self) -> bool:
        """Start a run: False (and nothing changes) while one is in flight."""
        if self.running:
            return False
        self._cancel.clear()
        self._started = time.perf_counter()
        self.param.update(running=True, done_tiles=0, message="", reference_seconds=None)
        return True

    def finish(self) -> None:
        """End a run: the wall time the person waited, controls usable again."""
        self.param.update(
            running=False, phase="", waited=time.perf_counter() - self._started
        )

    def cancel(self) -> None:
        """Stop the run in flight at its next batch (a second or two at most), or at once
        while its model is built or measured (the build goes on and is kept for the next)."""
        self._cancel.set()

    def apply(self, result: RunResult) -> None:
        """Show ``result`` and add it to the runs table (once per parameter set)."""
        runs = self.runs
        if result.settings.label() not in set(runs["run"]):
            row = pd.DataFrame([{k: result.row()[k] for k in KEPT_COLUMNS}])
            runs = row if runs.empty else pd.concat([runs, row], ignore_index=True)
        self.param.update(result=result, runs=runs, message="")

    def run(self) -> RunResult | None:
        """Compute and show the current choices; a user mistake goes to ``message``, and
        ``None`` comes back then or while another run is in flight."""
        if not self.begin():
            return None
        try:
            result = self.compute()
        except SeamlineError as exc:
            self.message = str(exc)
            return None
        finally:
            self.finish()
        self.apply(result)
        return result

    def polygons(self) -> gpd.GeoDataFrame:
        """The class polygons of the latest result (seamline.core.vector.polygonize), computed once
        per run."""
        result = self.result
        if result is None:
            raise SeamlineError("Run inference first: there is no class map to polygonize.")
        if self._polygons[0] is not result:
            self._polygons = (result, polygonize(result.classes))
        return self._polygons[1]

    @param.depends("result", "show_polygons", watch=True)
    async def _outline(self) -> None:
        """Polygonize in a worker thread when the polygons are shown: a fragmented class map
        has 10^5 polygons (seconds), which would stall every session on the event loop."""
        shown = self.result is not None and self.show_polygons
        self.outlines = await asyncio.to_thread(self.polygons) if shown else None

    async def geopackage_file(self) -> io.BytesIO:
        """:meth:`geopackage` built in a worker thread, for the download button."""
        return await asyncio.to_thread(self.geopackage)

    def geopackage(self) -> io.BytesIO:
        """The class polygons as a GeoPackage file, for the download button."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "classes.gpkg"
            self.polygons().to_file(path, driver="GPKG")
            return io.BytesIO(path.read_bytes())

    def grid(self, settings: RunSettings | None = None) -> TileGrid:
        """The tile grid of ``settings`` (default: the current choices) over the scene."""
        settings = settings or self.settings()
        return TileGrid(
            self.scene.sizes["y"],
            self.scene.sizes["x"],
            settings.tile_size,
            settings.overlap,
            Blend.parse(settings.blend),
            self.cache.get(self.model, precision=None).align,
        )
