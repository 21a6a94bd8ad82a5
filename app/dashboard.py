"""The dashboard served by ``panel serve app/dashboard.py`` (or ``seamline serve``).

The server folders it may read come from ``SEAMLINE_DATA_ROOTS`` (``seamline serve
--data-root DIR`` sets it); without it, only the demo data is read.
"""

from seamline.app.layout import create_app
from seamline.core.data.files import quiet_undecodable_gdal_messages
from seamline.core.data.paths import roots_from_env
from seamline.core.hardware import no_huge_page_advice

no_huge_page_advice()  # steady latency: see its docstring
quiet_undecodable_gdal_messages()  # uploads are read through rasterio, as in the CLI and service
create_app(data_roots=roots_from_env()).servable(title="Seamline")
