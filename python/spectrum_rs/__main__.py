"""``python -m spectrum_rs``: the command line."""

from .cli import main

raise SystemExit(main())
