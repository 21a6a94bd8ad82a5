"""`seamline report`: a self-contained HTML page of the current figures."""

from __future__ import annotations

import re

from seamline.app.cli import main
from seamline.app.report import write_report
from seamline.core.serve.cache import ModelCache


def test_report_is_self_contained_and_has_both_runs(tmp_path):
    path = write_report(tmp_path / "report.html", ModelCache())
    html = path.read_text()
    assert "Seamline report" in html and "int8 t256 o32 cosine b1" in html
    assert "fp32 t256 o32 cosine b1" in html
    assert "cdn.holoviz.org" not in html  # Panel's stylesheets inlined too
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", html)
    assert len(html) > 1_000_000  # Bokeh and Panel bundles are in the file
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_report_into_missing_folder_is_one_sentence(tmp_path, capsys):
    code = main(["report", str(tmp_path / "nope" / "r.html")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nope").exists()
