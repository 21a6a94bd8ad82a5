"""Sections that fit the browser window: maps framed to the width their column has, and
rows whose items go onto lines of their own where they do not fit side by side.

A map is drawn in a fixed frame of the scene's own aspect (:func:`~.map_axes.map_frame`:
a responsive 1:1 frame did not hold its aspect), so the server must know how wide the column
is: :class:`WidthProbe` measures it in the browser. A frame of 580 px overflowed a 900 px
window, where the column beside the sidebar is 540 px wide.
"""

from __future__ import annotations

import panel as pn
import param
from panel.custom import JSComponent

__all__ = ["MAP_CHROME", "MIN_FRAME", "WidthProbe", "grows", "map_width_probe", "wrapping_row"]

MAP_CHROME = 130
"""Pixels a map figure takes beside its frame: the y axis's ticks and label, the toolbar,
margins."""
MIN_FRAME = 200
"""The narrowest map frame drawn (a narrower window scrolls)."""


class WidthProbe(JSComponent):
    """An invisible element as wide as its container. ``available`` is that width in px
    (0 until the browser says; updated as the window is resized), ``frame_width`` the widest
    map frame that fits in it, at most ``cap``."""

    available = param.Integer(default=0, bounds=(0, None), doc="The container's width in px.")
    cap = param.Integer(default=580, bounds=(MIN_FRAME, None), constant=True,
                        doc="The widest map frame drawn, however wide the container.")  # fmt: skip
    frame_width = param.Integer(default=580, doc="The widest map frame that fits.")

    # A ResizeObserver on the element itself (stretched to its container's width); one
    # message to the server per resize that settles, in steps of 10 px.
    _esm = """
    export function render({ model, el }) {
      let timer = null
      const observer = new ResizeObserver((entries) => {
        clearTimeout(timer)
        timer = setTimeout(() => {
          const width = 10 * Math.floor(entries[0].contentRect.width / 10)
          if (width !== model.available) { model.available = width }
        }, 150)
      })
      observer.observe(el)
      model.on("remove", () => observer.disconnect())
    }
    """

    def __init__(self, **params) -> None:
        params.setdefault("frame_width", params.get("cap", self.param.cap.default))
        super().__init__(sizing_mode="stretch_width", height=0, margin=0, **params)

    @param.depends("available", watch=True)
    def _fit(self) -> None:
        if self.available:
            fits = min(self.cap, self.available - MAP_CHROME)
            self.frame_width = max(MIN_FRAME, fits)


def map_width_probe(view: param.Parameterized) -> WidthProbe:
    """A probe whose fitted frame width sets ``view.map_width`` (its default is the cap)."""
    probe = WidthProbe(cap=view.map_width)
    probe.param.watch(lambda event: setattr(view, "map_width", event.new), "frame_width")
    return probe


def grows(item: pn.viewable.Viewable, min_width: int) -> pn.viewable.Viewable:
    """``item`` made to take the rest of a :func:`wrapping_row`, and at least ``min_width``
    px of it (else it goes to the next line)."""
    item.min_width = min_width
    item.styles = {**item.styles, "flex": "1 1 0"}
    return item


def wrapping_row(*items: pn.viewable.Viewable) -> pn.FlexBox:
    """``items`` side by side where they fit, else each on a line of its own (fixed widths
    and :func:`grows`): squeezed beside the controls in a 900 px window, the drift section's
    text was one letter wide and its maps were cut off."""
    return pn.FlexBox(*items, flex_wrap="wrap", align_items="flex-start",
                      sizing_mode="stretch_width")  # fmt: skip
