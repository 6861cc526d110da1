"""Command-line entry points called by the workflow rules (and usable by hand).

    geodiff train --stage deterministic|residual --train priors/train.h5 --val priors/val.h5 --out model.pt --config-json '{...}' [--device cpu] [--checkpoint-every 250]
    geodiff sample --store priors/test.h5 --deterministic d.pt --residual r.pt --out ensemble.nc --members 8 [--sampler scaled|edm]
    geodiff evaluate --store priors/test.h5 --ensemble e.nc --baselines b1.nc b2.nc --out results/default/
    geodiff train ... --nodes 2 --nr 0 --gpus 4 --master-addr node0   (manual multi-node launch; --nr 1 on node 1)
    geodiff evaluate --model_path results/default/models --epoch_num 3   (scores of epoch 3's checkpoints)
    geodiff downscale --model results/default/models --input gfs.grib2 --out fine.nc [--members 8] [--box S N W E]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from geodiff.logs import setup_logging

log = logging.getLogger("geodiff")


def _config(args: argparse.Namespace) -> dict:
    if args.config_json:
        return json.loads(args.config_json)
    with open(args.config) as f:
        return yaml.safe_load(f)


def cmd_train(args: argparse.Namespace) -> None:
    from functools import partial

    from geodiff.train.distributed import launch_node
    from geodiff.train.loop import train

    run = partial(train, args.stage, args.train, args.val, args.out, args.logdir, _config(args), args.deterministic,
                  device=args.device, checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints)
    if args.nodes is None:
        run()
    else:
        launch_node(run, args.nodes, args.nr, args.gpus, args.master_addr, args.master_port)


def cmd_sample(args: argparse.Namespace) -> None:
    from geodiff.evaluate.sampling import write_ensemble

    guidance = {"stability": args.guidance, "last_steps": args.guidance_steps} if args.guidance > 0 else None
    write_ensemble(args.store, args.deterministic, args.residual, args.out, args.members, args.steps, args.s_churn,
                   args.seed, args.device, sampler=args.sampler, guidance=guidance)


def _members(text: str) -> int:
    """--members: an integer of at least 2 (an ensemble of one has no spread and no fair CRPS)."""
    from geodiff.evaluate.sampling import check_members

    members = int(text)
    try:
        check_members(members)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return members


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.model_path is not None:
        return score_checkpoints(args)
    if args.store is None or args.ensemble is None or args.baselines is None:
        raise SystemExit("geodiff evaluate: the tables need --store, --ensemble and --baselines "
                         "(or score a checkpoint with --model_path DIR --epoch_num E)")
    from geodiff.evaluate.tables import write_tables

    out = Path(args.out)
    write_tables({Path(args.store).stem: (args.store, args.ensemble, args.baselines)}, str(out / "metrics.csv"),
                 str(out / "metrics_by_level.csv"), str(out / "summary.md"), str(out / "figures"))


def score_checkpoints(args: argparse.Namespace) -> None:
    """``--model_path DIR --epoch_num E``: print the scores of epoch E's checkpoints (the seed's command line)."""
    from geodiff.train.checkpoints import score_epoch

    if args.epoch_num is None:
        raise SystemExit("geodiff evaluate --model_path needs --epoch_num E (the epoch whose checkpoint to score)")
    model_dir = Path(args.model_path)
    store = Path(args.store) if args.store else model_dir.parent / "priors" / "test.h5"
    if not store.is_file():
        raise SystemExit(f"geodiff evaluate: no store {store}; pass the split to score with --store")
    scores = score_epoch(model_dir, args.epoch_num, store, args.device)
    for stage, row in scores.items():
        log.info("%s, epoch %d (step %d, %s) on %s: %s", stage, row["epoch"], row["step"], row["checkpoint"], store,
                 {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
    print(json.dumps(scores, indent=1))


def cmd_downscale(args: argparse.Namespace) -> None:
    from geodiff.downscale.generate import downscale

    try:
        downscale(args.model, args.input, args.out, members=args.members, statics=args.statics, box=args.box,
                  steps=args.steps, tile=args.tile or None, overlap=args.overlap, seed=args.seed, device=args.device,
                  constraint=args.constraint)
    except (OSError, ValueError) as err:  # DataError is a ValueError: bad input, named; nothing is written
        raise SystemExit(f"geodiff downscale: {err}") from None


def parser() -> argparse.ArgumentParser:
    from geodiff.model.edm import SAMPLERS

    p = argparse.ArgumentParser(prog="geodiff", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", help="also log to this file")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the deterministic U-Net or the residual diffusion model")
    t.add_argument("--stage", choices=["deterministic", "residual"], required=True)
    t.add_argument("--train", required=True, help="train split store (.h5)")
    t.add_argument("--val", required=True, help="validation split store (.h5)")
    t.add_argument("--out", required=True, help="model file to write (.pt)")
    t.add_argument("--deterministic", help="deterministic model (.pt), for --stage residual")
    t.add_argument("--logdir", default="results/logs/tensorboard", help="TensorBoard folder")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where to train; required unless the config has train.device (a resolved config does)")
    t.add_argument("--checkpoint-every", type=_positive, metavar="N",
                   help="steps between resumable checkpoints; required unless the config has train.checkpoint_every")
    t.add_argument("--keep-checkpoints", type=_positive, metavar="K",
                   help="newest checkpoints kept; required unless the config has train.keep_checkpoints")
    node = t.add_argument_group("manual multi-node launch (the seed's command line; torchrun/srun need none of it)")
    node.add_argument("--nodes", "-n", type=_positive, metavar="N", help="nodes taking part; start this command on each")
    node.add_argument("--nr", type=int, default=0, metavar="R", help="this node's number, 0 to N-1 (default 0)")
    node.add_argument("--gpus", "-g", type=_positive, default=1, metavar="G",
                      help="processes on this node: one per GPU (on CPU, ranks of gloo); default 1")
    node.add_argument("--master-addr", help="node 0's address (default MASTER_ADDR; needed with --nodes > 1)")
    node.add_argument("--master-port", type=_positive, help="rendezvous port (default MASTER_PORT, else 29500)")
    cfg = t.add_mutually_exclusive_group(required=True)
    cfg.add_argument("--config", help="resolved config YAML (every key present, e.g. the run's config.resolved.yaml)")
    cfg.add_argument("--config-json", help="resolved config as a JSON string")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw the GeoDiff ensemble on a split")
    s.add_argument("--store", required=True)
    s.add_argument("--deterministic", required=True)
    s.add_argument("--residual", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--members", type=_members, default=8, help="ensemble members M (at least 2)")
    s.add_argument("--steps", type=int, default=18)
    s.add_argument("--s-churn", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--sampler", choices=sorted(SAMPLERS), default="scaled",
                   help="scaled: Heun in the scaled variables (default); edm: EDM's Algorithm 2")
    s.add_argument("--guidance", type=float, default=0.0, metavar="W",
                   help="stability guidance weight (config evaluate.guidance.stability; 0: none)")
    s.add_argument("--guidance-steps", type=_positive, default=4, metavar="K", help="guide the last K sampler steps")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("evaluate", help="metric tables and figures, or the scores of a training checkpoint")
    e.add_argument("--store", help="split store (.h5); with --model_path default <DIR>/../priors/test.h5")
    e.add_argument("--ensemble", nargs="+", help="ensemble files; the figures show the first")
    e.add_argument("--baselines", nargs="+")
    e.add_argument("--out", default="results")
    e.add_argument("--model_path", "--model-path", dest="model_path", metavar="DIR",
                   help="a run's models folder: score its training checkpoints of --epoch_num instead")
    e.add_argument("--epoch_num", "--epoch", dest="epoch_num", type=_positive, metavar="E",
                   help="epoch (from 1) whose newest checkpoint is scored")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_evaluate)

    from geodiff.downscale.generate import OVERLAP, TILE

    d = sub.add_parser("downscale", help="the ensemble of coarse data without fine truth (any box at the model's resolution)")
    d.add_argument("--model", required=True, metavar="DIR", help="a run's models folder with its bundle.json")
    d.add_argument("--input", required=True, nargs="+", metavar="FILE",
                   help="coarse temperature on pressure levels: NetCDF or GRIB, ERA5/CDS, GFS or CMIP names, any times")
    d.add_argument("--out", required=True, help="NetCDF file to write")
    d.add_argument("--members", type=_members, help="ensemble members (default: the run's evaluate.ensemble_size)")
    d.add_argument("--statics", metavar="FILE", help="orography and land-sea mask (default: the model's statics source, for the box)")
    d.add_argument("--box", nargs=4, type=float, metavar=("S", "N", "W", "E"),
                   help="cell edges of the fine grid, degrees (default: the input's extent, whole coarse cells)")
    d.add_argument("--steps", type=_positive, help="sampler steps (default: the run's evaluate.sampler_steps)")
    d.add_argument("--tile", type=int, default=TILE, help=f"tile side, fine cells; 0: the whole domain at once (default {TILE})")
    d.add_argument("--overlap", type=int, default=OVERLAP, help=f"overlap of neighbouring tiles, fine cells (default {OVERLAP})")
    d.add_argument("--constraint", choices=["none", "additive"], help="hard constraint (default: the run's model.constraint)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_downscale)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(args.log)
    args.func(args)


if __name__ == "__main__":
    main()
