"""The engine: class polygons traced window by window and merged across the seams.

How windows stay invisible. The raster is read ``window`` x ``window`` pixels at a time. In
each window GDAL (:func:`rasterio.features.shapes`) finds the connected components of each
class (same connectivity) and traces them in *pixel* coordinates, where every vertex is an
integer and so exact. A component that does not touch an inner window edge is final. The
others wait: GDAL burns them onto the window's edge lines (:func:`rasterio.features.rasterize`),
and on every seam the pixels facing each other (straight across, and diagonally too with
8-connectivity, window corners included) pair up the pieces of the same class that continue
across it; the connected groups of that pairing are unioned into one polygon each. With
4-connectivity two pieces that meet only at a corner are never paired, so they stay apart as
in a whole-raster run. After each row of windows, a group that does not reach that row's
bottom edge is complete and is written; the others are unioned so far and carried on as one
piece. Every polygon is put in one canonical form (valid, no collinear vertices, normalised)
and only then mapped to CRS coordinates, so a windowed run gives exactly the polygons of a
whole-raster run. Memory holds one window (its classes and a mask: 2 bytes a pixel) and the
polygons crossing one row of seams, not the raster;
:func:`seamline.core.vector.writers.write_polygons` streams the polygons into a GeoPackage as
they are completed (:mod:`seamline.core.vector.gpkg`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize, shapes

from seamline.core.errors import InvalidArgumentError
from seamline.core.vector.class_raster import Raster

__all__ = ["polygon_batches", "Batch"]

POLYGONIZE_TYPES = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "int32")}
SHAPES_CHUNK = 256  # polygons converted from GDAL's GeoJSON-like dicts at a time (RSS)

Batch = tuple[np.ndarray, np.ndarray]  # polygons in CRS coordinates and their class ids


def polygon_batches(
    raster: Raster,
    *,
    keep: set[int] | None,
    drop: set[int],
    min_area: float,
    connectivity: int,
    window: int | None,
) -> Iterator[Batch]:
    """Final polygons (in CRS): each window's own, then after each row of windows the groups
    of seam pieces that the next row cannot extend any more, merged."""
    height, width = raster.shape
    size = window or max(height, width)
    min_pixels = min_area / raster.pixel_area
    seams = _Seams(width, raster.dtype, connectivity)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (geoms, ids, class ids)
    next_id = 0  # raster-wide id of a window's polygon: its index in the window + 1 + next_id
    for r0 in range(0, height, size):
        for c0 in range(0, width, size):
            r1, c1 = min(height, r0 + size), min(width, c0 + size)
            data = raster.read(r0, r1, c0, c1)
            wanted = _wanted(data, raster.nodata, keep, drop)
            geoms, class_ids = _shapes(data, wanted, connectivity, c0, r0)
            del wanted
            lines = _edge_ids(geoms, (r0, r1, c0, c1), (height, width))
            at_seam = np.zeros(len(geoms) + 1, bool)
            for line in lines:
                at_seam[line] = True
            at_seam = at_seam[1:]
            yield _finish(geoms[~at_seam], class_ids[~at_seam], raster, min_pixels)
            ids = np.flatnonzero(at_seam) + 1 + next_id
            pending.append((geoms[at_seam], ids, class_ids[at_seam]))
            seams.add(lines, data, next_id, c0)
            next_id += len(geoms)
            del data, geoms, class_ids
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

    def add(self, lines: list[np.ndarray], data: np.ndarray, offset: int, c0: int) -> None:
        """Record a window's edges (raster-wide ids, classes); pair its left edge.

        ``lines`` are the window-local ids on its top, bottom, left and right pixel lines.
        """
        top, bottom, left, right = (np.where(line > 0, line + offset, 0) for line in lines)
        if self.left is not None:
            self.pairs.append(_seam_pairs(self.left, (left, data[:, 0]), self.shifts))
        self.left = (right, data[:, -1].copy())
        c1 = c0 + data.shape[1]
        self.top[0][c0:c1], self.top[1][c0:c1] = top, data[0]
        self.bottom[0][c0:c1], self.bottom[1][c0:c1] = bottom, data[-1]

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


def _shapes(
    data: np.ndarray, wanted: np.ndarray, connectivity: int, c0: int, r0: int
) -> tuple[np.ndarray, np.ndarray]:
    """The connected components of each class in a window as polygons, and their classes.

    GDAL (:func:`rasterio.features.shapes`) finds the components, same value and
    connectivity, and traces them in raster pixel coordinates, where every vertex is an
    integer; the polygons are made valid. No label raster: it would cost 4 bytes a pixel.
    """
    if data.dtype.kind == "b":
        data = data.view(np.uint8)
    elif data.dtype not in POLYGONIZE_TYPES:  # GDAL traces 32-bit integers at most
        if data.size and (data.min() < -(2**31) or data.max() >= 2**31):
            raise InvalidArgumentError(
                "Class ids must fit in 32 bits to be polygonized: renumber the classes."
            )
        data = data.astype(np.int32)
    found = shapes(
        data, mask=wanted, connectivity=connectivity, transform=Affine.translation(c0, r0)
    )
    geoms, class_ids = [np.array([], dtype=object)], [np.array([], np.int64)]
    while chunk := list(itertools.islice(found, SHAPES_CHUNK)):  # GeoJSON-like dicts
        geoms.append(_polygons([geometry["coordinates"] for geometry, _ in chunk]))
        class_ids.append(np.array([value for _, value in chunk], dtype=np.int64))
    return np.concatenate(geoms), np.concatenate(class_ids)


def _polygons(rings_of: list[list]) -> np.ndarray:
    """Valid shapely polygons from GeoJSON-like rings, built at once."""
    rings = list(itertools.chain.from_iterable(rings_of))
    xy = np.array(list(itertools.chain.from_iterable(rings)), dtype=np.float64)
    ring_of = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    polygon_of = np.repeat(np.arange(len(rings_of)), [len(r) for r in rings_of])
    geoms = shapely.polygons(shapely.linearrings(xy, indices=ring_of), indices=polygon_of)
    # GDAL writes a component joined only at a corner (8-connectivity) as one self-touching
    # ring; its valid form is a MultiPolygon ("structure" keeps areas, never lines).
    bad = ~shapely.is_valid(geoms)
    geoms[bad] = _canonical(
        shapely.make_valid(geoms[bad], method="structure", keep_collapsed=False)
    )
    return geoms


def _edge_ids(
    geoms: np.ndarray, window: tuple[int, int, int, int], shape: tuple[int, int]
) -> list[np.ndarray]:
    """Which polygon covers each pixel of the window's top, bottom, left and right lines.

    Window-local ids (index in ``geoms`` + 1; 0: none, and all 0 on the raster's border).
    A polygon reaches an edge when its bounds do (pixel coordinates: exact); GDAL burns it
    (:func:`rasterio.features.rasterize`) onto the one-pixel line, after GEOS clipped it to
    that line so that only a few vertices go through.
    """
    (r0, r1, c0, c1), (height, width) = window, shape
    bounds = shapely.bounds(geoms)  # x: column, y: row
    strips = [
        (r0 > 0, bounds[:, 1] == r0, (c0, r0, c1, r0 + 1)),
        (r1 < height, bounds[:, 3] == r1, (c0, r1 - 1, c1, r1)),
        (c0 > 0, bounds[:, 0] == c0, (c0, r0, c0 + 1, r1)),
        (c1 < width, bounds[:, 2] == c1, (c1 - 1, r0, c1, r1)),
    ]
    lines = []
    for inner, reaching, (x0, y0, x1, y1) in strips:
        line = np.zeros((y1 - y0, x1 - x0), np.int32)
        if inner and reaching.any():
            clipped = shapely.clip_by_rect(geoms[reaching], x0, y0, x1, y1)
            parts, index = shapely.get_parts(clipped, return_index=True)
            areas = shapely.get_type_id(parts) == 3  # clipping can leave lines on the edge
            ids = np.flatnonzero(reaching)[index[areas]] + 1
            burn = zip(parts[areas], ids.tolist(), strict=True)
            rasterize(burn, out=line, transform=Affine.translation(x0, y0))
        lines.append(line.ravel().astype(np.int64))
    return lines


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
    roots, group = np.unique(_smallest_connected(len(ids), index), return_inverse=True)
    count = len(roots)
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


def _smallest_connected(count: int, edges: np.ndarray) -> np.ndarray:
    """For each node of an undirected graph, the smallest node connected to it.

    Hand-written, though scipy.sparse.csgraph.connected_components does the same: importing
    scipy.sparse costs 30 MB of resident memory (measured), a sixth of what the whole
    windowed run may use (issue #9's aim), for graphs of a few thousand seam pieces. Hook
    and compress (as in Shiloach-Vishkin), vectorised: every edge hooks the larger of its
    two roots under the smaller, then pointer jumping flattens the trees; a round hooks at
    least one root, so it ends, and here after a few rounds.
    """
    parent = np.arange(count)
    a, b = edges[:, 0], edges[:, 1]
    while len(a) and (parent[a] != parent[b]).any():
        ra, rb = parent[a], parent[b]
        low = np.minimum(ra, rb)
        np.minimum.at(parent, ra, low)
        np.minimum.at(parent, rb, low)
        while (parent[parent] != parent).any():
            parent = parent[parent]
    return parent


def _finish(
    geoms: np.ndarray, class_ids: np.ndarray, raster: Raster, min_pixels: float
) -> Batch:
    """Final pixel-space polygons -> canonical CRS polygons and their class ids."""
    if min_pixels > 0 and len(geoms):
        big = shapely.area(geoms) >= min_pixels
        geoms, class_ids = _fill_holes(geoms[big], min_pixels), class_ids[big]
    t = raster.transform

    def to_crs(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f])

    return shapely.normalize(shapely.transform(geoms, to_crs)), class_ids


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

