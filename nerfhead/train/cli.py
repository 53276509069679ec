"""``nerfhead train DATA --config head|lips|torso|tiny|file.yaml --out RUN [...]``.

Examples::

    nerfhead train data/obama --config head --out runs/obama_head
    nerfhead train data/obama --config lips --init runs/obama_head --out runs/obama_lips
    nerfhead train data/obama --config torso --init runs/obama_lips --out runs/obama_torso
    nerfhead train data/obama --config tiny --out runs/tiny --device cpu --set data.image_size=96

A run folder that already holds a checkpoint resumes from it (``--no-resume`` refuses), but
only a run of the same dataset and settings: anything else is refused, and ``--force-new``
moves the old run aside (RUN.replaced-<time>) to start over. With ``--init`` the model
section and (unless set) ``data.image_size`` come from that run.
Errors and what to do: docs/troubleshooting.md
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n", 2)[2]
    p.add_argument("data", help="dataset folder (nerfhead preprocess output or SyncTalk layout)")
    p.add_argument("--config", default="head",
                   help="preset name (head, lips, torso, tiny) or a YAML file [head]")
    p.add_argument("--out", required=True, help="run folder (created; resumed when it has a checkpoint)")
    p.add_argument("--init", default=None, help="run folder or checkpoint to start this stage from")
    p.add_argument("--iters", type=int, default=None, help="override train.iters")
    p.add_argument("--seed", type=int, default=None, help="override train.seed")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto [auto]")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set data.image_size=256 (repeatable)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="require an existing checkpoint in --out and continue from it")
    resume.add_argument("--no-resume", action="store_true",
                        help="fail instead of resuming when --out already has checkpoints")
    resume.add_argument("--force-new", action="store_true",
                        help="start a new run: move an existing --out run aside "
                             "(OUT.replaced-<time>) instead of resuming or refusing it")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: train.cpu_threads, and where that is 0 "
                        "the cores not busy with other processes, from the 1-minute load "
                        "average; 1 is fastest on a machine shared with other jobs)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this much wall time (checkpoint + validation at the stop; "
                        "rerunning the command resumes)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    import torch

    from nerfhead.config import ConfigError
    from nerfhead.data.dataset import DatasetError, check_dataset_dir
    from nerfhead.fileio import DiskFullError, OutputLocationError, check_output_dir
    from nerfhead.train.checkpoint import CheckpointError, list_checkpoints
    from nerfhead.train.config import load_configs
    from nerfhead.train.trainer import Trainer, TrainingDiverged

    log = logging.getLogger("nerfhead.train")
    overrides = list(args.overrides)
    if args.iters is not None:
        overrides.append(f"train.iters={args.iters}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:  # inputs and the output location, before any work
        check_dataset_dir(args.data)
        load_configs(args.config, overrides)  # a bad preset or --set makes no --out folder
        check_output_dir(args.out, "nerfhead train --out")
    except (DatasetError, OutputLocationError, ConfigError, FileNotFoundError) as e:
        print(f"nerfhead train: {e}", file=sys.stderr)
        return 2
    has_ckpt = bool(list_checkpoints(args.out))
    if args.resume and not has_ckpt:
        print(f"nerfhead train: --resume given but {args.out} has no checkpoint", file=sys.stderr)
        return 2
    if args.no_resume and has_ckpt:
        print(f"nerfhead train: {args.out} already has checkpoints (--no-resume); use another "
              "--out folder, or --force-new to move the old run aside", file=sys.stderr)
        return 2
    try:
        if args.init and not any(o.startswith("data.image_size=") for o in overrides):
            # a later stage continues at the resolution its head was trained at
            from nerfhead.train.checkpoint import read_checkpoint

            size = read_checkpoint(args.init)["configs"]["data"]["image_size"]
            overrides.insert(0, f"data.image_size={size}")
        configs = load_configs(args.config, overrides)
        from nerfhead.threads import set_torch_threads

        # --threads, else the preset's train.cpu_threads, else (0) chosen from the free cores
        threads = args.threads if args.threads is not None else (configs["train"].cpu_threads or None)
        set_torch_threads(threads, device, "nerfhead train")
        trainer = Trainer(args.data, configs, args.out, device=device, init=args.init,
                          force_new=args.force_new)
        log.info("stage %s on %s: %d train frames at %dx%d, audio %s %s, device %s",
                 trainer.stage, args.data, len(trainer.train_set), trainer.train_set.camera.width,
                 trainer.train_set.camera.height, trainer.train_set.audio_kind,
                 tuple(trainer.train_set.audio.shape[1:]), device)
        max_s = None if args.max_minutes is None else 60.0 * args.max_minutes
        result = trainer.fit(progress=not args.no_progress, max_seconds=max_s)
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError) as e:
        print(f"nerfhead train: {e}", file=sys.stderr)
        return 2
    except DiskFullError as e:
        kept = list_checkpoints(args.out)
        print(f"nerfhead train: {e}; "
              + (f"the last checkpoint {kept[-1].name} is intact and a rerun resumes from it"
                 if kept else "no checkpoint was written yet"), file=sys.stderr)
        return 1
    except TrainingDiverged as e:
        print(f"nerfhead train: {e}", file=sys.stderr)
        return 1
    if result["validations"]:
        print(f"trained {trainer.stage} to step {result['step']}: val PSNR "
              f"{result['validations'][-1]['psnr']:.2f} dB; checkpoint {result['checkpoint']}")
        return 0
    # nothing was trained: the run was already at train.iters
    earlier = last_validation(trainer.run_dir)
    print(f"{trainer.stage} already trained to step {result['step']} (train.iters "
          f"{trainer.tcfg.iters}): nothing to do; "
          + (f"last val PSNR {earlier['psnr']:.2f} dB at step {earlier['step']}; "
             if earlier else "")
          + f"checkpoint {result['checkpoint']} (raise --iters to train on)")
    return 0


def last_validation(run_dir) -> dict | None:
    """The last validation in RUN/metrics.jsonl, or None."""
    from nerfhead.train.checkpoint import read_metrics

    return next((r for r in reversed(read_metrics(run_dir)) if "psnr" in r), None)
