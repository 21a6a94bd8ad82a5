"""Run once when ``panel serve --setup`` starts: pay imports and numba JIT before visitors do.

datashader compiles its regrid/rasterize kernels on first use (seconds); doing it here means
the first browser session renders as fast as the tenth.
"""

import holoviews as hv
import numpy as np
from holoviews.operation.datashader import regrid

import components.scene_view  # noqa: F401  (imports panel, holoviews, core)

hv.extension("bokeh")
_image = hv.RGB(np.zeros((64, 64, 4), dtype=np.uint8), vdims=list("RGBA"))
hv.render(regrid(_image, width=32, height=32, dynamic=False))
