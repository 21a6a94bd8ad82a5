"""Vector output: class polygons from a class raster, window by window, merged across seams.

:func:`polygonize` turns a class-id raster (as :func:`core.predict.predict_scene` returns it or
``seamline predict`` writes it) into one polygon per connected component of each class, in the
raster's CRS. :func:`write_polygons` writes them as GeoPackage, GeoJSON or GeoParquet.

How windows stay invisible. The raster is read ``window`` x ``window`` pixels at a time. In
each window the components of each class are labelled (:func:`scipy.ndimage.label`, same
connectivity) and polygonized by GDAL (:func:`rasterio.features.shapes`) in *pixel*
coordinates, where every vertex is an integer and so exact. A component that does not touch an
inner window edge is final. The others wait: on every seam the pixels facing each other
(straight across, and diagonally too with 8-connectivity, window corners included) pair up the
pieces of the same class that continue across it, and the connected groups of that pairing (a
sparse graph) are unioned into one polygon each. With 4-connectivity two pieces that meet only
at a corner are never paired, so they stay apart as in a whole-raster run. After each row of
windows, a group that does not reach that row's bottom edge is complete and is written; the
others are unioned so far and carried on as one piece. Every polygon is put in one canonical
form (valid, no collinear vertices, normalised) and only then mapped to CRS coordinates, so a
windowed run gives exactly the polygons of a whole-raster run. Memory holds one window and the
polygons crossing one row of seams, not the raster; :func:`write_polygons` streams the
polygons into a GeoPackage as they are completed.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import xarray as xr
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from core.errors import BandMismatchError, InvalidArgumentError, MissingCRSError
from core.io import atomic_path, check_output_path, open_raster

__all__ = [
    "polygonize",
    "write_polygons",
    "vector_format",
    "DEFAULT_WINDOW",
    "AUTO_WINDOW_PIXELS",
    "VECTOR_FORMATS",
]

DEFAULT_WINDOW = 2048
"""Window side in pixels used when a raster is larger than :data:`AUTO_WINDOW_PIXELS`."""

AUTO_WINDOW_PIXELS = 4096 * 4096
"""Rasters with more pixels than this are always read window by window."""

VECTOR_FORMATS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".parquet": "GeoParquet"}
"""Output formats by file extension."""

GDAL_CACHE = 8 * 2**20  # bytes: windows are read once each; a bigger block cache only grows RSS

Classes = xr.DataArray | str | os.PathLike


@dataclass(frozen=True)
class _Raster:
    """A validated ``(y, x)`` class raster and what the polygons need from it."""

    values: xr.DataArray
    source: str
    names: tuple[str, ...]
    nodata: float | None

    @property
    def transform(self) -> Affine:
        return self.values.rio.transform()

    @property
    def pixel_area(self) -> float:
        return abs(self.transform.determinant)


def polygonize(
    classes: Classes,
    *,
    classes_to_keep: Sequence[int | str] | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    connectivity: int = 4,
    window: int | None = None,
    background: int | str | None = None,
) -> gpd.GeoDataFrame:
    """Class polygons of a class-id raster: one feature per connected component of a class.

    Parameters
    ----------
    classes
        A ``(y, x)`` (or one-band) integer DataArray with a CRS, as ``predict_scene`` returns,
        or the path of a class GeoTIFF, as ``seamline predict`` writes.
    classes_to_keep
        Class ids or names to polygonize (default: all). Names come from the raster's
        ``classes`` attribute or tag, which Seamline's predictions carry.
    min_area
        In CRS units squared (default 0: keep all). Polygons smaller than this are dropped and
        holes smaller than this are filled, as a sieve would (the enclosing polygon takes the
        hole; a small patch between two other classes leaves a gap instead).
    simplify
        Tolerance in CRS units (default 0: exact pixel edges). Coverage simplification
        (:func:`shapely.coverage_simplify`): shared edges between neighbours are simplified
        once, so neighbours stay gap- and overlap-free.
    connectivity
        4 (default: pixels touching by an edge are connected) or 8 (corners connect too; a
        component joined only at a corner is then a MultiPolygon).
    window
        Read and polygonize ``window`` x ``window`` pixels at a time; seams are merged, so the
        result equals the whole-raster result. Default: the whole raster, or windows of
        :data:`DEFAULT_WINDOW` when it has more than :data:`AUTO_WINDOW_PIXELS` pixels.
    background
        A class id or name that gives no polygons (default: none). Nodata never does.

    Returns
    -------
    GeoDataFrame with ``class_id``, ``class_name``, ``area`` (CRS units squared) and
    ``geometry``, in the raster's CRS, sorted by class, then north to south and west to east.
    """
    raster, options = _prepare(
        classes, classes_to_keep, min_area, simplify, connectivity, window, background
    )
    return _collect(raster, options, simplify)


def _collect(raster: _Raster, options: dict, simplify: float) -> gpd.GeoDataFrame:
    """All polygons in one GeoDataFrame, in a canonical order, coverage-simplified if asked."""
    batches = list(_batches(raster, **options))
    gdf = _frame(
        np.concatenate([b.geometry.to_numpy() for b in batches]),
        np.concatenate([b["class_id"].to_numpy() for b in batches]),
        raster,
        transform=False,
    )
    bounds = shapely.bounds(gdf.geometry.to_numpy())
    order = np.lexsort((bounds[:, 1], bounds[:, 2], bounds[:, 0], -bounds[:, 3], gdf["class_id"]))
    gdf = gdf.iloc[order].reset_index(drop=True)
    if simplify > 0 and len(gdf):
        geoms = shapely.coverage_simplify(gdf.geometry.to_numpy(), simplify)
        gdf = _frame(geoms, gdf["class_id"].to_numpy(), raster, transform=False)
    return gdf


def vector_format(path: str | os.PathLike) -> str:
    """The output format of ``path`` by its extension; fails early if it cannot be written."""
    path = Path(path)
    fmt = VECTOR_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidArgumentError(
            f"Output {str(path)!r} has an unsupported format {path.suffix or '(no extension)'!r}:"
            f" name it {', '.join(VECTOR_FORMATS)} (GeoPackage, GeoJSON or GeoParquet)."
        )
    if fmt == "GeoParquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InvalidArgumentError(
                f"Writing GeoParquet ({str(path)!r}) needs the pyarrow package: install it "
                "(pip install pyarrow) or write a .gpkg."
            ) from None
    check_output_path(path)
    return fmt


def write_polygons(
    classes: Classes,
    path: str | os.PathLike,
    *,
    classes_to_keep: Sequence[int | str] | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    connectivity: int = 4,
    window: int | None = None,
    background: int | str | None = None,
) -> dict:
    """Polygonize ``classes`` (see :func:`polygonize`) into a vector file, atomically.

    The format follows the extension (:data:`VECTOR_FORMATS`). A GeoPackage without
    ``simplify`` is written window by window, so memory does not grow with the raster;
    GeoJSON, GeoParquet and simplified output are written from memory at once. Returns a
    summary: output, format, polygon count per class name, window size.
    """
    fmt = vector_format(path)
    path = Path(path)
    raster, options = _prepare(
        classes, classes_to_keep, min_area, simplify, connectivity, window, background
    )
    if fmt == "GPKG" and simplify == 0:
        batches: Iterator[gpd.GeoDataFrame] = _batches(raster, **options)
    else:
        batches = iter([_collect(raster, options, simplify)])
    counts: Counter[str] = Counter()
    layer = {
        "layer": path.stem,
        "geometry_type": "Polygon" if connectivity == 4 else "MultiPolygon",
        "promote_to_multi": connectivity == 8,
    }
    with atomic_path(path) as tmp:
        staging = tmp.with_name(tmp.name + path.suffix)  # GDAL checks a GeoPackage's extension
        try:
            for batch in batches:
                if fmt == "GeoParquet":
                    batch.to_parquet(staging)
                elif staging.exists():
                    if len(batch):
                        batch.to_file(staging, driver=fmt, mode="a", **layer)
                else:  # GeoPackage 1.2: GDAL 3.6 (Debian 12, its QGIS) warns on 1.4 files
                    version = {"VERSION": "1.2"} if fmt == "GPKG" else {}
                    batch.to_file(staging, driver=fmt, dataset_options=version, **layer)
                counts.update(batch["class_name"].tolist())
            os.replace(staging, tmp)
        finally:
            staging.unlink(missing_ok=True)
    return {
        "output": str(path),
        "format": fmt,
        "polygons": dict(sorted(counts.items())),
        "total_polygons": sum(counts.values()),
        "window": options["window"],
        "crs": raster.values.rio.crs.to_string(),
    }


# -- validation -------------------------------------------------------------------------------


def _prepare(
    classes: Classes,
    classes_to_keep: Sequence[int | str] | None,
    min_area: float,
    simplify: float,
    connectivity: int,
    window: int | None,
    background: int | str | None,
) -> tuple[_Raster, dict]:
    """Validate the arguments first (cheap), then the raster; return the engine's options."""
    if connectivity not in (4, 8):
        raise InvalidArgumentError(f"connectivity must be 4 or 8, got {connectivity!r}.")
    if not min_area >= 0 or not simplify >= 0:
        raise InvalidArgumentError(
            f"min_area and simplify must be >= 0, got {min_area!r} and {simplify!r}."
        )
    if window is not None and (not isinstance(window, int | np.integer) or window < 1):
        raise InvalidArgumentError(f"window must be a positive number of pixels, got {window!r}.")
    raster = _open(classes)
    if window is None and raster.values.size > AUTO_WINDOW_PIXELS:
        window = DEFAULT_WINDOW
    keep = None if classes_to_keep is None else _class_ids(classes_to_keep, raster)
    drop = set() if background is None else _class_ids([background], raster)
    return raster, {
        "keep": keep,
        "drop": drop,
        "min_area": float(min_area),
        "connectivity": connectivity,
        "window": int(window) if window else None,
    }


def _open(classes: Classes) -> _Raster:
    if isinstance(classes, xr.DataArray):
        da, source = classes, str(classes.name or "the class array")
    else:
        da, source = open_raster(classes), str(classes)
    bands = int(np.prod([da.sizes[d] for d in da.dims if d not in ("y", "x")]))
    if da.dtype.kind not in "iub" or bands != 1:
        raise BandMismatchError(
            f"Raster {source!r} holds {da.dtype} values in {bands} band(s), but polygons need "
            "one band of integer class ids: pass a class raster (what `seamline predict` writes "
            "without --probabilities)."
        )
    if da.rio.crs is None:
        raise MissingCRSError(
            f"Raster {source!r} has no CRS, so its polygons cannot be placed: set one "
            "(da.rio.write_crs() or gdal_edit.py -a_srs) and try again."
        )
    values = da.squeeze([d for d in da.dims if d not in ("y", "x")], drop=True)
    nodata = da.rio.nodata
    return _Raster(
        values,
        source,
        _class_names(da.attrs.get("classes")),
        None if nodata is None or np.isnan(nodata) else nodata,
    )


def _class_names(value: object) -> tuple[str, ...]:
    """Class names from a ``classes`` attribute: a sequence, or its text in a GeoTIFF tag."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return ()
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()


def _class_ids(wanted: Sequence[int | str], raster: _Raster) -> set[int]:
    ids = set()
    for item in wanted:
        if isinstance(item, str) and item in raster.names:
            ids.add(raster.names.index(item))
        elif isinstance(item, int | np.integer) or (isinstance(item, str) and item.isdigit()):
            ids.add(int(item))
        else:
            close = difflib.get_close_matches(str(item), raster.names, n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else (
                    f"known classes: {', '.join(raster.names)}."
                    if raster.names
                    else "this raster names no classes, so give class ids."
                )
            )
            raise InvalidArgumentError(
                f"Class {item!r} is not a class of {raster.source!r}: {hint}"
            )
    return ids


# -- the engine: windows in pixel coordinates ------------------------------------------------


def _batches(
    raster: _Raster,
    *,
    keep: set[int] | None,
    drop: set[int],
    min_area: float,
    connectivity: int,
    window: int | None,
) -> Iterator[gpd.GeoDataFrame]:
    """Final polygons (in CRS): each window's own, then after each row of windows the groups
    of seam pieces that the next row cannot extend any more, merged."""
    height, width = raster.values.shape
    size = window or max(height, width)
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    min_pixels = min_area / raster.pixel_area
    seams = _Seams(width, raster.values.dtype, connectivity)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (geoms, ids, class ids)
    next_id = 0  # raster-wide id of a window's component = window-local id + next_id
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE):
        for r0 in range(0, height, size):
            for c0 in range(0, width, size):
                r1, c1 = min(height, r0 + size), min(width, c0 + size)
                data = np.asarray(raster.values[r0:r1, c0:c1].values)
                wanted = _wanted(data, raster.nodata, keep, drop)
                local, class_of = _components(data, wanted, structure)
                del wanted
                edges = [
                    local[0] if r0 else (),
                    local[-1] if r1 < height else (),
                    local[:, 0] if c0 else (),
                    local[:, -1] if c1 < width else (),
                ]
                seam = np.unique(np.concatenate([[0], *edges]).astype(np.int64))
                if min_pixels > 0:  # drop small components that cannot grow across a seam
                    small = np.bincount(local.ravel(), minlength=len(class_of)) < min_pixels
                    small[seam] = False
                    local[small[local]] = 0
                geoms, ids = _shapes(local, connectivity, c0, r0)
                at_seam = np.isin(ids, seam)
                yield _finish(geoms[~at_seam], class_of[ids[~at_seam]], raster, min_pixels)
                pending.append((geoms[at_seam], ids[at_seam] + next_id, class_of[ids[at_seam]]))
                seams.add(local, data, next_id, c0)
                next_id += len(class_of) - 1
                del data, local
            seams.pair_above()
            # A group is complete unless it reaches the bottom of this row of windows; the
            # open ones are unioned so far and carried on as one piece under one id each.
            reaching = seams.bottom[0] if r1 < height else np.zeros(0, np.int64)
            closed, carried, ids_to_group = _merge(pending, seams.pairs, reaching)
            yield _finish(*closed, raster, min_pixels)
            pending, seams.pairs = [carried], []
            if r1 < height:
                seams.next_row(*ids_to_group)


class _Seams:
    """The pixel lines facing each other across every window seam, paired up as they come.

    Within a row of windows, each window's first column meets the previous window's last
    column; between rows of windows, the first pixel row of a row of windows (raster-wide, so
    diagonals at window corners are seen) meets the last pixel row of the row above.
    """

    def __init__(self, width: int, dtype: np.dtype, connectivity: int) -> None:
        self.shifts = (0,) if connectivity == 4 else (-1, 0, 1)
        self.width, self.dtype = width, dtype
        self.pairs: list[np.ndarray] = []
        self.above: tuple[np.ndarray, np.ndarray] | None = None
        self.top, self.bottom = self._line(), self._line()
        self.left: tuple[np.ndarray, np.ndarray] | None = None

    def _line(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(self.width, np.int64), np.zeros(self.width, self.dtype)

    def add(self, local: np.ndarray, data: np.ndarray, offset: int, c0: int) -> None:
        """Record a window's edges (raster-wide ids, classes); pair its left edge."""

        def ids(line: np.ndarray) -> np.ndarray:
            return np.where(line > 0, line.astype(np.int64) + offset, 0)

        if self.left is not None:
            self.pairs.append(_seam_pairs(self.left, (ids(local[:, 0]), data[:, 0]), self.shifts))
        self.left = (ids(local[:, -1]), data[:, -1])
        c1 = c0 + local.shape[1]
        self.top[0][c0:c1], self.top[1][c0:c1] = ids(local[0]), data[0]
        self.bottom[0][c0:c1], self.bottom[1][c0:c1] = ids(local[-1]), data[-1]

    def pair_above(self) -> None:
        """Pair the top line of the finished row of windows with the row above."""
        if self.above is not None:
            self.pairs.append(_seam_pairs(self.above, self.top, self.shifts))

    def next_row(self, ids: np.ndarray, group_ids: np.ndarray) -> None:
        """Start a row of windows; the bottom line above now names pieces by group id.

        ``ids`` (sorted) are the pieces of the merge, ``group_ids`` their group's id.
        """
        line, found = self.bottom[0], self.bottom[0] > 0
        line[found] = group_ids[np.searchsorted(ids, line[found])]
        self.above, self.top, self.bottom = self.bottom, self._line(), self._line()
        self.left = None


def _wanted(
    data: np.ndarray, nodata: float | None, keep: set[int] | None, drop: set[int]
) -> np.ndarray:
    """Pixels that give polygons: not nodata, not background, among the kept classes."""
    wanted = np.ones(data.shape, bool) if keep is None else np.isin(data, sorted(keep))
    if nodata is not None:
        wanted &= data != nodata
    if drop:
        wanted &= ~np.isin(data, sorted(drop))
    return wanted


def _components(
    data: np.ndarray, wanted: np.ndarray, structure: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Connected components per class: int32 ids (0 = none) and the class of each id."""
    local = np.zeros(data.shape, np.int32)
    mask, labels = np.empty(data.shape, bool), np.empty(data.shape, np.int32)  # reused
    class_of = [np.zeros(1, np.int64)]  # id 0: no component
    total = 0
    for value in np.unique(data[wanted]):  # one pass per class present, not per pixel
        np.equal(data, value, out=mask)
        mask &= wanted
        count = ndimage.label(mask, structure=structure, output=labels)
        np.add(labels, total, out=local, where=mask)
        class_of.append(np.full(count, value, np.int64))
        total += count
    return local, np.concatenate(class_of)


def _shapes(
    local: np.ndarray, connectivity: int, c0: int, r0: int
) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's polygons of each component id, in raster pixel coordinates, made valid."""
    found = shapes(
        local, mask=local > 0, connectivity=connectivity, transform=Affine.translation(c0, r0)
    )
    rings: list[list] = []
    ring_counts, ids = [], []
    for geometry, value in found:  # GeoJSON-like dicts: gather rings, build geometries at once
        rings += geometry["coordinates"]
        ring_counts.append(len(geometry["coordinates"]))
        ids.append(value)
    if not ids:
        return np.array([], dtype=object), np.array([], np.int64)
    xy = np.array(list(itertools.chain.from_iterable(rings)), dtype=np.float64)
    ring_of = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    polygon_of = np.repeat(np.arange(len(ids)), ring_counts)
    geoms = shapely.polygons(shapely.linearrings(xy, indices=ring_of), indices=polygon_of)
    # GDAL writes a component joined only at a corner (8-connectivity) as one self-touching
    # ring; its valid form is a MultiPolygon ("structure" keeps areas, never lines).
    bad = ~shapely.is_valid(geoms)
    geoms[bad] = _canonical(
        shapely.make_valid(geoms[bad], method="structure", keep_collapsed=False)
    )
    return geoms, np.array(ids, dtype=np.int64)


def _canonical(geoms: np.ndarray) -> np.ndarray:
    """Drop collinear vertices, which unions (and repairs) leave where GDAL writes none.

    With this, a polygon unioned across seams has exactly the vertices GDAL gives for it in
    one piece. Douglas-Peucker with tolerance 0 removes only collinear vertices (exactly:
    coordinates here are integers, pixel corners), so the shape and its validity are kept.
    """
    return shapely.simplify(geoms, 0.0, preserve_topology=False)


def _seam_pairs(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], shifts: Sequence[int]
) -> np.ndarray:
    """Pairs of component ids facing each other across a seam, of the same class.

    ``a`` and ``b`` are (ids, classes) of the pixel lines on either side, index-aligned;
    a shift of +-1 pairs the diagonal neighbours (8-connectivity).
    """
    (a_ids, a_cls), (b_ids, b_cls), n = a, b, len(a[0])
    found = []
    for s in shifts:
        sa, sb = slice(max(0, -s), n - max(0, s)), slice(max(0, s), n - max(0, -s))
        ok = (a_ids[sa] > 0) & (b_ids[sb] > 0) & (a_cls[sa] == b_cls[sb])
        found.append(np.column_stack([a_ids[sa][ok], b_ids[sb][ok]]))
    return np.unique(np.concatenate(found), axis=0)


def _merge(
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    pairs: list[np.ndarray],
    reaching: np.ndarray,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray], tuple]:
    """Union the seam pieces that the seam pairs connect; one geometry per group.

    ``reaching`` holds the ids on the bottom line of the row of windows: a group with one of
    them is still open. Returns the closed groups (canonical geometries, class ids), the open
    ones (geometries, group ids, class ids) and, for the pieces (ids, sorted), their group ids.
    A group's id is the smallest id of its pieces.
    """
    geoms, ids, class_ids = (np.concatenate(parts) for parts in zip(*pending, strict=True))
    order = np.argsort(ids)
    geoms, ids, class_ids = geoms[order], ids[order], class_ids[order]
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    index = np.searchsorted(ids, edges)
    graph = coo_matrix((np.ones(len(index)), (index[:, 0], index[:, 1])), (len(ids),) * 2)
    count, group = connected_components(graph, directed=False)
    order = np.argsort(group, kind="stable")  # group by group, smallest id first
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])[:count]
    members = np.split(order, starts[1:]) if count else []
    merged = np.empty(count, dtype=object)
    merged[:] = [geoms[m[0]] if len(m) == 1 else shapely.union_all(geoms[m]) for m in members]
    group_id, group_class = ids[order[starts]], class_ids[order[starts]]
    open_ = np.zeros(count, bool)
    open_[group[np.searchsorted(ids, reaching[reaching > 0])]] = True
    return (
        (_canonical(merged[~open_]), group_class[~open_]),
        (merged[open_], group_id[open_], group_class[open_]),
        (ids, group_id[group]),
    )


def _finish(
    geoms: np.ndarray, class_ids: np.ndarray, raster: _Raster, min_pixels: float
) -> gpd.GeoDataFrame:
    """Final pixel-space polygons -> canonical CRS polygons with their attributes."""
    if min_pixels > 0 and len(geoms):
        big = shapely.area(geoms) >= min_pixels
        geoms, class_ids = _fill_holes(geoms[big], min_pixels), class_ids[big]
    return _frame(geoms, class_ids, raster)


def _fill_holes(geoms: np.ndarray, min_pixels: float) -> np.ndarray:
    """Remove interior rings smaller than ``min_pixels`` (vectorised over all rings)."""
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    shell = np.r_[True, ring_of[1:] != ring_of[:-1]]
    kept = shell | (shapely.area(shapely.polygons(rings)) >= min_pixels)
    if kept.all():
        return geoms
    filled = shapely.polygons(rings[kept], indices=ring_of[kept])
    out = geoms.copy()
    for g in np.unique(part_of[ring_of[~kept]]):  # only the geometries that lost a hole
        # A filled hole may cover another part of the same MultiPolygon: union the parts.
        pieces = filled[part_of == g]
        out[g] = pieces[0] if len(pieces) == 1 else _canonical(shapely.union_all(pieces))
    return out


def _frame(
    geoms: np.ndarray, class_ids: np.ndarray, raster: _Raster, *, transform: bool = True
) -> gpd.GeoDataFrame:
    """A GeoDataFrame in the raster's CRS; ``transform`` maps pixel to CRS coordinates."""
    if transform:
        t = raster.transform

        def to_crs(xy: np.ndarray) -> np.ndarray:
            x, y = xy[:, 0], xy[:, 1]
            return np.column_stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f])

        geoms = shapely.normalize(shapely.transform(geoms, to_crs))
    present, inverse = np.unique(class_ids, return_inverse=True)
    names = np.array([_name(int(i), raster.names) for i in present] + [""], dtype=object)
    return gpd.GeoDataFrame(
        {
            "class_id": class_ids.astype(np.int64),
            "class_name": names[inverse.reshape(-1)],
            "area": shapely.area(geoms),
        },
        geometry=gpd.GeoSeries(geoms, crs=raster.values.rio.crs),
    )


def _name(class_id: int, names: tuple[str, ...]) -> str:
    return names[class_id] if 0 <= class_id < len(names) else f"class_{class_id}"
