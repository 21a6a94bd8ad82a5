"""Class maps to polygons (GeoPackage and other OGR formats), streamed window by window."""
