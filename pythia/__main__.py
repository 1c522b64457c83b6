"""`python -m pythia`: the command line (see pythia/cli.py)."""
from .cli import main

raise SystemExit(main())
