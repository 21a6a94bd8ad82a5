"""Dashboard components: param state plus ``pn.viewable.Viewer`` views, over ``seamline.core``.

The components draw with HoloViews' Bokeh backend; importing it here lets their elements take
plot options even where no ``hv.extension`` call has run yet (a script, a test).
"""

import holoviews.plotting.bokeh  # noqa: F401
