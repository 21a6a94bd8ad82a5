"""The demo: synthetic scenes, the Sentinel-2 sample, the demo U-Net and its training.

One example of a user's data and model, quarantined: production code never imports it (a test
checks); the app layer names it as its default (``seamline.app.models``)."""
