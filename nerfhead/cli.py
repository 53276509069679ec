"""The ``nerfhead`` command. Each subcommand lives in its component's module, which
provides ``add_arguments(parser)`` and ``run(args) -> int`` and imports heavy libraries
only inside ``run`` so that ``nerfhead --help`` stays instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: printed after Ctrl-C unless the subcommand's module says otherwise (``ON_INTERRUPT``)
RESUMES = "interrupted; completed work is kept and rerunning the same command resumes from it"

# name -> (module, one-line help)
SUBCOMMANDS = {
    "info": ("nerfhead.info", "versions, devices and which op backends can run here"),
    "preprocess": ("preprocess.cli", "turn a talking-head video into a training dataset folder"),
    "train": ("nerfhead.train.cli", "train one speaker's model on a dataset folder"),
    "render": ("nerfhead.render.cli", "render a trained model with new audio and poses to mp4"),
    "evaluate": ("nerfhead.eval.cli", "metrics on the validation split, with and without masks"),
    "run": ("nerfhead.pipeline", "preprocess, train, render and evaluate in one go"),
    "batch": ("nerfhead.batch.cli", "many speakers through run's stages as Ray tasks, one results table"),
    "words": ("nerfhead.audio.words_cli", "a clip's word timings from its audio: a transcript aligned, or words recognised"),
    "respeak": ("nerfhead.audio.respeak_cli", "a clip's words said by synthetic voices on its clock (lip sync for other speakers)"),
    "bench": ("nerfhead.bench", "benchmarks: kernels, render, motion"),
    "motion": ("nerfhead.motion.cli", "motion files (export, edit, generate) and head motion from audio"),
    "serve": ("nerfhead.serve.cli", "stream a trained speaker to the browser over WebRTC, live"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerfhead", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            p.set_defaults(_unavailable=f"nerfhead {name} is unavailable: {e}")
            continue
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _on_interrupt=getattr(mod, "ON_INTERRUPT", RESUMES))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 1
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(getattr(args, "_on_interrupt", RESUMES), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
