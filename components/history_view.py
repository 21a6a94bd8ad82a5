"""Recorded drift checks: the history ``predict --baseline`` and ``drift check`` write.

Production predictions record a drift check per scene in a SQLite history
(:class:`seamline.core.monitor.history.History`); ``seamline serve --history H.sqlite`` shows
it here: the score of every recorded check over time with the threshold and the alerts (the
drift section's own plot), and one row per check with the metric that drove it. The history
grows while the dashboard is open: *Reload* reads it again. The file is the operator's
(a server flag), never a path a visitor types.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import panel as pn
import param

from seamline.components.drift_view import SCORE_FLOOR, score_plot
from seamline.components.errors import unexpected_errors
from seamline.core.data.remote import source_path
from seamline.core.errors import SeamlineError
from seamline.core.monitor.check import SCORE_THRESHOLD
from seamline.core.monitor.history import History

__all__ = ["HistoryView", "check_table"]


def check_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per recorded check (from :meth:`History.frame`'s metric rows): time, scene,
    score, drift, and the metric with the highest value / threshold (the driver)."""
    columns = ["time", "scene", "score", "drift", "driver"]
    scored = frame[frame["feature"] != "scene"].dropna(subset=["threshold"])  # not the total
    if scored.empty:
        return pd.DataFrame(columns=columns)
    scored = scored.assign(ratio=scored["value"] / scored["threshold"])
    top = scored.loc[scored.groupby("check_id")["ratio"].idxmax()]
    top = top.sort_values(["time", "check_id"])
    return pd.DataFrame({
        "time": top["time"].to_numpy(), "scene": top["scene"].to_numpy(),
        "score": top["score"].to_numpy(), "drift": (top["score"] > SCORE_THRESHOLD).to_numpy(),
        "driver": (top["feature"] + " " + top["metric"]).to_numpy(),
    })  # fmt: skip


class HistoryView(pn.viewable.Viewer):
    """The recorded checks of one history database: score over time and a table."""

    db = param.String(default="", doc="The history database (seamline serve --history).")
    checks = param.DataFrame(default=None, allow_None=True, doc="One row per recorded check.")
    message = param.String(default="")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._reload = pn.widgets.Button(name="Reload", button_type="primary", width=100)
        self._reload.on_click(lambda _event: self.load())
        self.load()

    def load(self) -> None:
        """Read the history again (a missing or foreign file is one sentence)."""
        with unexpected_errors(self):
            try:
                with History(self.db, create=False) as history:
                    self.checks = check_table(history.frame())
            except SeamlineError as exc:
                self.checks, self.message = None, str(exc)
                return
            self.message = "" if len(self.checks) else (
                "No check recorded yet: `seamline predict ... --baseline B.json --db "
                f"{self.db} --time T` records one per scene.")  # fmt: skip

    @param.depends("checks")
    def _plot(self) -> pn.viewable.Viewable:
        if self.checks is None or self.checks.empty:
            return pn.pane.Markdown("")
        frame = self.checks.assign(events="", baseline=False)
        scores = frame["score"].clip(lower=SCORE_FLOOR)
        low = min(scores.min(), SCORE_THRESHOLD) / 2  # the threshold line always in view
        high = max(scores.max(), SCORE_THRESHOLD) * 2
        plot = score_plot(frame).opts(
            title="Drift score per recorded check (alert above the dashed line)",
            logy=True, ylim=(low, high), padding=0.05, responsive=True, height=320,
            legend_position="bottom_right",
        )  # fmt: skip
        return pn.pane.HoloViews(plot, sizing_mode="stretch_width")

    @param.depends("checks")
    def _table(self) -> pn.viewable.Viewable:
        if self.checks is None or self.checks.empty:
            return pn.pane.Markdown("")
        shown = self.checks.assign(  # the file's name: a full path or URL crowds the table
            scene=[source_path(s).name for s in self.checks["scene"]])
        return pn.widgets.Tabulator(shown, disabled=True, show_index=False,
                                    layout="fit_data_stretch", sizing_mode="stretch_width",
                                    height=260)  # fmt: skip

    def __panel__(self) -> pn.viewable.Viewable:
        """Reload, the message, the plot and the table."""
        return pn.Column(
            pn.Row(self._reload, pn.pane.Markdown(f"History: `{self.db}`")),
            pn.pane.Alert(param.bind(lambda m: m, self.param.message), alert_type="warning",
                          visible=param.bind(bool, self.param.message)),  # fmt: skip
            self._plot, self._table, sizing_mode="stretch_width",
        )
