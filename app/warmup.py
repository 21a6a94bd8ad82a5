"""Run once when ``panel serve --setup`` starts: pay imports and numba JIT before visitors do.

datashader compiles a regrid kernel per dtype and aggregator on first use, ~1 s each. Compiled
here: the RGB composites, and float32 maps with ``first`` (the class map: without it the first
run's map showed 1.4 s later, seen with py-spy on the served app) and ``mean`` (drift maps,
seam weights). Not ``max`` (the seam difference): it follows an untiled FP32 prediction the
user asked for, which takes longer than the compile.
"""

import holoviews as hv
import numpy as np
from holoviews.operation.datashader import regrid

import components.scene_view  # noqa: F401  (imports panel, holoviews, core)

hv.extension("bokeh")
_values = np.full((64, 64), np.nan, dtype="float32")
_values[:32] = 1.0
for _element, _aggregator in (
    (hv.RGB(np.zeros((64, 64, 4), dtype=np.uint8), vdims=list("RGBA")), "mean"),
    (hv.Image(_values), "first"),
    (hv.Image(_values), "mean"),
):
    hv.render(regrid(_element, aggregator=_aggregator, width=32, height=32, dynamic=False))
