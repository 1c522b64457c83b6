"""`python -m pythia plot`: the loss curves of a --log-file as an SVG (pythia.inspection.plot)."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "plot"
SUMMARY = "draw the loss curves of a --log-file as an SVG"
DESCRIPTION = ("Read the JSON lines that train --log-file wrote and draw the train and val loss "
               "against the step as an SVG picture to open in a browser.")
EPILOG = ("examples:\n  python -m pythia plot run.jsonl --out loss.svg\n"
          "  python -m pythia plot run.jsonl --out loss-log.svg --log-y")


OTHER_PICTURES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".pdf", ".eps", ".ps")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", metavar="LOG.jsonl", help="the file written by --log-file")
    p.add_argument("--out", required=True, metavar="FILE.svg", help="the SVG to write")
    p.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from ..inspection.plot import loss_svg, read_log
    from ..system.streams import keep_running_without_streams
    keep_running_without_streams()              # the summary is a report: the file is the product
    from ..system.atomic import atomic_write
    from ..system.claims import claim_output
    from ..errors import ConfigError
    suffix = Path(args.out).suffix
    if suffix.lower() in OTHER_PICTURES:         # a viewer would find SVG text where it expects that format
        raise ConfigError(f"--out {args.out!r} ends in {suffix} but plot writes an SVG picture; name it "
                          f"{str(Path(args.out).with_suffix('.svg'))!r}")
    from ..system.signals import guard_signals
    # a stop signal raises (reading a long log takes seconds), so the claim's lock is removed on the way out
    with guard_signals(), \
            claim_output(args.out, flag="--out", replace=args.force, inputs={"LOG.jsonl": [Path(args.log)]}) as claim:
        out = claim.path
        train, val = read_log(args.log, notice=lambda text: print(f"note: {text}"))
        svg = loss_svg(train, val, log_y=args.log_y, title=f"Loss: {Path(args.log).name}")
        atomic_write(out, lambda f: f.write(svg.encode("utf-8")))
    print(f"wrote {out} ({len(train)} train and {len(val)} val points); open it in a browser")
    return 0
