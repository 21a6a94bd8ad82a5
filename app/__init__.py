"""Composition: the dashboard ``panel serve`` runs, the prediction service and the
``seamline`` command line. The product's defaults (the demo model, its calibration) are named
here (:mod:`seamline.app.models`), never in ``seamline.core``."""
