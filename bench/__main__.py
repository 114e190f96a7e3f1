"""``python -m bench``: see bench/__init__.py and ``python -m bench --help``."""

from bench.runner import main

raise SystemExit(main())
