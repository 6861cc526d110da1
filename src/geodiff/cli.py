"""Command-line entry points called by the workflow rules (and usable by hand).

    geodiff train --stage deterministic|residual --train priors/train.h5 --val priors/val.h5 --out model.pt --config-json '{...}' [--device cpu] [--checkpoint-every 250]
    geodiff sample --store priors/test.h5 --deterministic d.pt --residual r.pt --out ensemble.nc --members 8 [--sampler scaled|edm]
    geodiff evaluate --store priors/test.h5 --model-path models/ --ensemble e.nc --baselines b1.nc b2.nc --out results/default/
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
    from geodiff.train.loop import train

    train(args.stage, args.train, args.val, args.out, args.logdir, _config(args), args.deterministic,
          device=args.device, checkpoint_every=args.checkpoint_every)


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
    from geodiff.evaluate.tables import write_tables

    out = Path(args.out)
    write_tables(args.store, args.ensemble, args.baselines, str(out / "metrics.csv"), str(out / "metrics_by_level.csv"),
                 str(out / "summary.md"), str(out / "figures"))


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

    e = sub.add_parser("evaluate", help="metric tables and figures")
    e.add_argument("--store", required=True)
    e.add_argument("--ensemble", nargs="+", required=True, help="ensemble files; the figures show the first")
    e.add_argument("--baselines", nargs="+", required=True)
    e.add_argument("--out", default="results")
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(args.log)
    args.func(args)


if __name__ == "__main__":
    main()
