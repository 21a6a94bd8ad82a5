"""The dashboard served by ``panel serve app/dashboard.py`` (or ``seamline serve``)."""

from app.layout import create_app

create_app().servable(title="Seamline")
