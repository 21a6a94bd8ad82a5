"""STAC items as rasters: an item's band assets stacked into one virtual raster.

A STAC item (Sentinel-2 L2A, Landsat...) keeps each band as its own COG, often at several
resolutions (10 m and 20 m). :func:`write_stac_vrt` stacks the chosen assets, in the order
asked, into a GDAL VRT on the finest asset's grid (coarser bands resampled by GDAL as they
are read, bilinear), local or remote (``/vsicurl/``, range requests); a multi-band asset
gives all its bands. A VRT is a raster file
to every reader here, so the tile-row stream, the AOI crop and the dask bands read only the
windows they need from each asset, and nothing is loaded whole: rioxarray's
``reproject_match`` would resample whole bands in memory. (No library writes a VRT from
Python without GDAL's own bindings, which the rasterio wheels do not carry; the XML is GDAL's
documented format.) Bands are named after the asset keys (a multi-band asset's after its band
descriptions, else ``KEY_1``...).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.dtypes import _gdal_typename
from rasterio.errors import RasterioError

from seamline.core.data.files import first_line
from seamline.core.data.remote import is_remote, remote_raster
from seamline.core.errors import InputFileError, InvalidArgumentError

__all__ = ["read_item", "read_stac", "write_stac_vrt"]


def read_stac(source: str | os.PathLike, what: str = "STAC file"):
    """The STAC object (item, catalog, collection) at a path or URL (pystac); one sentence
    naming it as ``what`` if it cannot be read."""
    import pystac

    try:
        return pystac.read_file(str(source))
    except Exception as exc:  # noqa: BLE001 -- pystac raises many kinds for a bad file
        raise InputFileError(
            f"{what} {str(source)!r} could not be read ({type(exc).__name__}: "
            f"{first_line(exc)}): pass a STAC JSON file or URL."
        ) from None


def read_item(item: str | os.PathLike):
    """The STAC item at a path or URL (pystac); one sentence if it is not one."""
    import pystac

    read = read_stac(item, "STAC item")
    if not isinstance(read, pystac.Item):
        raise InputFileError(
            f"{str(item)!r} is a STAC {type(read).__name__}, not an Item: pass one of its "
            "items."
        )
    return read


def _asset_source(href: str) -> str:
    """A GDAL path for an asset's href (a URL through ``/vsicurl/``)."""
    return f"/vsicurl/{remote_raster(href)}" if is_remote(href) else href


def write_stac_vrt(item: str | os.PathLike, assets: Sequence[str],
                   path: str | os.PathLike) -> Path:  # fmt: skip
    """Write the VRT of ``item``'s ``assets`` (keys, in band order) to ``path``; one
    sentence for an asset the item lacks, or assets on different CRSs or extents."""
    stac = read_item(item)
    missing = [key for key in assets if key not in stac.assets]
    if missing or not assets:
        raise InvalidArgumentError(
            f"STAC item {stac.id!r} has no asset {', '.join(map(repr, missing)) or '(none asked)'}"
            f": pick from {', '.join(sorted(stac.assets))} with --assets."
        )
    headers = []
    for key in assets:
        source = _asset_source(stac.assets[key].get_absolute_href())
        try:
            with rasterio.open(source) as ds:
                names = [key] if ds.count == 1 else [
                    ds.descriptions[i] or f"{key}_{i + 1}" for i in range(ds.count)]
                headers.append((key, source, ds.crs, ds.transform, ds.width, ds.height,
                                ds.dtypes[0], ds.nodata, names))  # fmt: skip
        except RasterioError as exc:
            raise InputFileError(
                f"Asset {key!r} of STAC item {stac.id!r} could not be read "
                f"({first_line(exc)}): check its href and that its server answers range "
                "requests."
            ) from None
    finest = min(headers, key=lambda h: abs(h[3].a))
    _, _, crs, transform, width, height, _, _, _ = finest
    dtype = np.result_type(*[h[6] for h in headers])
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in transform.to_gdal())
    index = 0
    for key, source, asset_crs, asset_transform, w, h, _, nodata, names in headers:
        if asset_crs != crs:
            raise InvalidArgumentError(
                f"Assets {finest[0]!r} and {key!r} of STAC item {stac.id!r} are on different "
                "CRSs: pick assets of one grid, or prepare them onto one (`seamline prepare`)."
            )
        x0, y0 = ~transform * (asset_transform.c, asset_transform.f)
        x1, y1 = ~transform * (asset_transform * (w, h))
        if max(abs(x0), abs(y0), abs(x1 - width), abs(y1 - height)) > 0.5:
            raise InvalidArgumentError(
                f"Asset {key!r} of STAC item {stac.id!r} covers another extent than "
                f"{finest[0]!r}: pick assets of one footprint."
            )
        for source_band, name in enumerate(names, start=1):  # every band of the asset
            index += 1
            band = ET.SubElement(root, "VRTRasterBand", dataType=_gdal_typename(dtype.name),
                                 band=str(index))  # fmt: skip
            ET.SubElement(band, "Description").text = name
            resampled = (w, h) != (width, height)
            element = ET.SubElement(band, "ComplexSource",
                                    **({"resampling": "bilinear"} if resampled else {}))
            ET.SubElement(element, "SourceFilename", relativeToVRT="0").text = source
            ET.SubElement(element, "SourceBand").text = str(source_band)
            ET.SubElement(element, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
            ET.SubElement(element, "DstRect", xOff="0", yOff="0", xSize=str(width),
                          ySize=str(height))  # fmt: skip
            if nodata is not None and not math.isnan(nodata):
                ET.SubElement(element, "NODATA").text = repr(float(nodata))
                ET.SubElement(band, "NoDataValue").text = repr(float(nodata))
    path = Path(path)
    ET.ElementTree(root).write(path, encoding="unicode")
    return path
