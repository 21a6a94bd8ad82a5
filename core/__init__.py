"""The pipeline, headless: one sub-package per stage (``docs/architecture.md``).

Pure Python on numpy, xarray/rioxarray and torch; never imports panel, holoviews, geoviews or
bokeh, so it runs in a batch job or on a dask worker. The curated API is :mod:`seamline`.
"""
