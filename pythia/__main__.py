"""`python -m pythia`: the command line (see pythia/cli.py)."""
from .cli import run

run()
