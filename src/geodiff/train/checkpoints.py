"""A training run's checkpoints by step and epoch: their names, and the scores of an epoch's weights.

Training writes `<model>.pt.ckpt/step-<step>_epoch-<epoch>.pt` (epochs from 1: the pass
over the training data the step belongs to) and keeps the newest ``train.keep_checkpoints``.
:func:`score_epoch` is ``geodiff evaluate --model_path DIR --epoch_num E``: the validation
scores (:func:`geodiff.train.validation.validate`) of the newest checkpoint of epoch E of
each stage found in DIR, the residual model with its EMA weights (what training would ship).
"""

from __future__ import annotations

from pathlib import Path

from geodiff.checkpoint import load_checkpoint
from geodiff.model.networks import load_model, model_from_state
from geodiff.train.validation import validate

STAGE_FILES = {"deterministic": "deterministic.pt", "residual": "residual.pt"}
"""Model file of each stage in a run's models folder (its checkpoints are `<file>.ckpt/`)."""


def checkpoint_dir(out_path: str | Path) -> Path:
    """The folder of a model file's resumable checkpoints: `<out>.ckpt`."""
    return Path(f"{out_path}.ckpt")


def checkpoint_name(step: int, epoch: int) -> str:
    """File name of the checkpoint after `step` optimiser steps, taken in `epoch` (from 1)."""
    return f"step-{step:08d}_epoch-{epoch:04d}.pt"


def checkpoints(ckpt_dir: Path) -> list[tuple[int, int, Path]]:
    """(step, epoch, path) of the checkpoints in `ckpt_dir`, oldest first."""
    found = []
    for path in ckpt_dir.glob("step-*_epoch-*.pt"):
        step, epoch = path.stem.split("_")
        found.append((int(step.removeprefix("step-")), int(epoch.removeprefix("epoch-")), path))
    return sorted(found)


def epoch_checkpoint(ckpt_dir: Path, epoch: int) -> Path:
    """The newest checkpoint of `epoch` in `ckpt_dir`; an error lists the epochs there are."""
    found = [path for _, e, path in checkpoints(ckpt_dir) if e == epoch]
    if not found:
        have = sorted({e for _, e, _ in checkpoints(ckpt_dir)})
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint of epoch {epoch} (epochs kept: {have or 'none'}; "
                                "train.keep_checkpoints sets how many are kept)")
    return found[-1]


def score_epoch(model_dir: str | Path, epoch: int, store: str | Path, device: str = "cpu") -> dict[str, dict]:
    """Stage -> {step, epoch, checkpoint, scores...} of epoch `epoch`'s checkpoints in `model_dir`, on `store`.

    The deterministic stage must have checkpoints in `model_dir`; the residual stage is scored
    when it has some, against the finished ``deterministic.pt`` it was trained on.
    """
    model_dir = Path(model_dir)
    dirs = {stage: checkpoint_dir(model_dir / name) for stage, name in STAGE_FILES.items()}
    if not dirs["deterministic"].is_dir():
        raise FileNotFoundError(f"{model_dir}: no training checkpoints ({dirs['deterministic'].name}/ is missing); "
                                "pass the models folder of a run, e.g. results/<run_name>/models")
    scores: dict[str, dict] = {}
    for stage, ckpt_dir in dirs.items():
        if stage == "residual" and not checkpoints(ckpt_dir):
            continue
        path = epoch_checkpoint(ckpt_dir, epoch)
        state = load_checkpoint(path, map_location=device)
        weights = state["model"] if stage == "deterministic" else state["ema"]["module"]
        model = model_from_state(state, weights).to(device)
        deterministic = None
        if stage == "residual":
            deterministic = load_model(str(model_dir / STAGE_FILES["deterministic"]), device).eval()
        metrics = validate(stage, model, deterministic, str(store), model.prior_names, device)
        scores[stage] = {"step": int(state["step"]), "epoch": int(state["epoch"]), "checkpoint": str(path), **metrics}
    return scores
