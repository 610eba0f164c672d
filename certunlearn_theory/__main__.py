"""``python -m certunlearn_theory``: the accountant's command line (no torch needed)."""
from .cli import main

raise SystemExit(main())
