"""``python -m seamline``: the ``seamline`` command line."""

from seamline.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
