"""``python -m mlefit``: the same command line as the ``mlefit`` console script."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
