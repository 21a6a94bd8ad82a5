"""Run once when ``panel serve --setup`` starts: pay imports, numba JIT, the auto choice and
the INT8 model before visitors do.

Every model the server offers is loaded. The first one's Precision auto (the page's default)
is measured at the page's default tile size, once per machine (the disk cache: 12 s for the
demo model at 256 px on a 2-core AMD EPYC, 0.1-0.5 s at later starts), and built; its INT8
build (quantization with its default calibration, ~4 s for the demo model) goes into the
process-wide cache the sessions share, with the two sessions tiled inference runs it on:
the first run of a session then costs its prediction, not a measurement or a quantization.
Another model than the demo's (which has no default calibration) is measured on the first
scene a visitor runs it on.

datashader compiles a regrid kernel per dtype and aggregator on first use, ~1 s each. Compiled
here: the RGB composites, and float32 maps with ``first`` (the class map: without it the first
run's map showed 1.4 s later, seen with py-spy on the served app) and ``mean`` (drift maps,
seam weights). Not ``max`` (the seam difference): it follows an untiled FP32 prediction the
user asked for, which takes longer than the compile.
"""

import holoviews as hv
import numpy as np
from holoviews.operation.datashader import regrid

import seamline.components.scene_view  # noqa: F401  (imports panel, holoviews, core)
from seamline.app.models import MODELS, models_from_env
from seamline.components.inference_state import InferenceState
from seamline.core.errors import SeamlineError

hv.extension("bokeh")
_values = np.full((64, 64), np.nan, dtype="float32")
_values[:32] = 1.0
for _element, _aggregator in (
    (hv.RGB(np.zeros((64, 64, 4), dtype=np.uint8), vdims=list("RGBA")), "mean"),
    (hv.Image(_values), "first"),
    (hv.Image(_values), "mean"),
):
    hv.render(regrid(_element, aggregator=_aggregator, width=32, height=32, dynamic=False))

for _spec in models_from_env():
    MODELS.get(_spec, precision=None)  # `seamline serve` has checked that each loads
_first = models_from_env()[0]
_tile = InferenceState.param.tile_size.default
for _build in (lambda: MODELS.auto(_first, tile_size=_tile)[0],
               lambda: MODELS.get(_first, precision="int8")):  # fmt: skip
    try:  # where the default calibration fits the model's bands
        _module = _build().module
    except SeamlineError:
        continue  # the page says why when someone asks for it
    if hasattr(_module, "parallel_forward"):  # an ONNX Runtime model: its sessions built now
        _module.parallel_forward()
