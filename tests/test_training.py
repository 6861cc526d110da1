"""The training loop on real stores: a tiny U-Net beats bicubic, the residual model's scale and
validation, the ensemble, stale checkpoints, missing truth and diverging trainings."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from snakemake.utils import validate as validate_schema
from torch.utils.data import DataLoader

from geodiff import __version__
from geodiff.checkpoint import load_checkpoint
from geodiff.cli import main as cli_main
from geodiff.data.loader import StoreDataset
from geodiff.evaluate.sampling import ensemble_prediction
from geodiff.model.networks import DeterministicModel, ResidualModel, load_model
from geodiff.train.checkpoints import checkpoints
from geodiff.train.config import RunSettings, TrainConfig
from geodiff.train.loop import TrainingDiverged, train
from geodiff.train.validation import VALIDATION_SIGMAS, validate
from test_store import PRIORS, build, months  # noqa: F401 (months: the module fixture build() reads)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def resolved(config: dict) -> dict:
    """The config as the workflow hands it to training: validated against the schema, defaults filled in."""
    config = copy.deepcopy(config)
    validate_schema(config, str(SCHEMA), set_default=True)
    return config


@pytest.fixture(scope="module")
def stores(months, tmp_path_factory):  # noqa: F811
    """Train (1 Jan - 15 Feb) and val (16 - 28 Feb) stores of the test config, and the resolved config."""
    d = tmp_path_factory.mktemp("stores")
    build(months, d / "train.h5")
    build(months, d / "val.h5", "val", stats_from=str(d / "train.h5"))
    return resolved(months[0]), d


def with_train(config: dict, **train_keys) -> dict:
    cfg = copy.deepcopy(config)
    cfg["train"].update(train_keys)
    return cfg


def bicubic_rmse(path) -> float:
    """RMSE of the bicubic input against the truth in a store, K."""
    with h5py.File(path) as f:
        return float(np.sqrt(np.mean((f["lr_up/t"][:].astype(np.float64) - f["hr/t"][:]) ** 2)))


@pytest.fixture(scope="module")
def unet(stores, tmp_path_factory):
    """A U-Net trained for 300 steps in bfloat16 autocast where the CPU has it: (path, validation metrics, config)."""
    config, d = stores
    out = tmp_path_factory.mktemp("models") / "deterministic.pt"
    cfg = with_train(config, deterministic_steps=300, amp=True)
    val = train("deterministic", str(d / "train.h5"), str(d / "val.h5"), str(out), str(out.parent / "tb"), cfg)
    return out, val, cfg


def test_trained_unet_beats_bicubic(stores, unet):
    _, d = stores
    path, val, cfg = unet
    assert val["rmse_K"] < 0.8 * bicubic_rmse(d / "val.h5")
    kept = checkpoints(path.with_name(path.name + ".ckpt"))  # kept after the run, for geodiff evaluate --epoch_num
    assert cfg["train"]["checkpoint_every"] == 20 and [step for step, _, _ in kept] == [260, 280, 300]  # newest 3
    assert load_model(str(path)).prior_names == ["theta", "lapse_rate", "static_stability"]
    state = load_checkpoint(path)
    assert state["geodiff_version"] == __version__
    assert state["config_hash"] == TrainConfig.from_config(cfg, "deterministic").hash
    assert TrainConfig.from_config(with_train(cfg, lr=1e-3), "deterministic").hash != state["config_hash"]
    run_only = with_train(cfg, device="cuda", checkpoint_every=7)
    assert TrainConfig.from_config(run_only, "deterministic").hash == state["config_hash"]


def test_residual_model_is_scaled_per_level_and_samples(stores, unet, tmp_path):
    config, d = stores
    det_path, _, _ = unet
    out = tmp_path / "residual.pt"
    val = train("residual", str(d / "train.h5"), str(d / "val.h5"), str(out), str(tmp_path / "tb"),
                with_train(config, residual_steps=20), deterministic_path=str(det_path))
    assert set(val) == {"denoise_rmse_K", *(f"denoise_rmse_K_sigma{s:g}" for s in VALIDATION_SIGMAS)}
    residual, det = load_model(str(out)), load_model(str(det_path))
    first = next(iter(DataLoader(StoreDataset(str(d / "train.h5"), det.prior_names), batch_size=32)))
    with torch.no_grad():
        r = first["hr"] - det(first["lr_up"], first["static"], first["priors"])
    level_rms = r.square().mean(dim=(0, 1, 3, 4)).sqrt()
    assert float(level_rms.max() / level_rms.min()) > 1.5  # the residual really differs between levels
    torch.testing.assert_close(residual.r_scale, level_rms, rtol=0.1, atol=0)

    ens = ensemble_prediction(str(d / "val.h5"), str(det_path), str(out), members=3, steps=8, limit=4, device="cpu")
    assert ens.dims == ("member", "time", "level", "lat", "lon") and ens.shape == (3, 4, 5, 16, 16)
    spread = ens.std("member")
    assert np.isfinite(ens.values).all() and float(spread.min()) > 0
    assert math.isclose(float(ens.mean()), 250.0, abs_tol=30.0)  # kelvin, not normalised units
    edm = ensemble_prediction(str(d / "val.h5"), str(det_path), str(out), members=3, steps=8, limit=4, device="cpu",
                              sampler="edm")
    assert edm.shape == ens.shape and not np.array_equal(edm.values, ens.values)


def test_residual_validation_scores_the_residual_model(stores):
    """An untrained denoiser is D = c_skip x (zero output head), so its denoising error at σ is known:
    E[(D(r̃ + σn) − r̃)²] = (1 − c)² r̃² + c² σ², c = 1/(1 + σ²) (σd = 1), times (s_l std_l)² in K²."""
    _, d = stores
    val = str(d / "val.h5")
    det = DeterministicModel(n_levels=5, n_priors=3, width=8, depth=1, position="none", norm="group").eval()  # untrained: ŷ = x
    residual = ResidualModel(n_levels=5, n_priors=3, width=8, depth=1, position="none", norm="group").eval()
    residual.r_scale.copy_(torch.tensor([2.0, 1.5, 1.0, 0.7, 0.5]))
    metrics = validate("residual", residual, det, val, PRIORS, "cpu")

    with h5py.File(val) as f:
        r_k = f["hr/t"][:].astype(np.float64) - f["lr_up/t"][:]  # residual of ŷ = x, K
        std = f["stats/t/std"][:].astype(np.float64)
    scale_k = (residual.r_scale.double().numpy() * std)[None, :, None, None]  # s_l std_l, K per scaled unit
    r_scaled = r_k / scale_k
    mse = []
    for sigma in VALIDATION_SIGMAS:
        c = 1.0 / (1.0 + sigma**2)
        mse.append(np.mean(((1 - c) ** 2 * r_scaled**2 + c**2 * sigma**2) * scale_k**2))
        assert metrics[f"denoise_rmse_K_sigma{sigma:g}"] == pytest.approx(math.sqrt(mse[-1]), rel=0.02)
    assert metrics["denoise_rmse_K"] == pytest.approx(math.sqrt(np.mean(mse)), rel=0.02)


def poisoned_copy(src: Path, dst: Path, dataset: str, index, value: float = np.nan) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        data = f[dataset][()]
        data[index] = value
        f[dataset][...] = data
    return dst


def test_missing_truth_is_masked_and_the_model_trains(stores, tmp_path):
    """NaN in the truth (kept by the store where it is missing) changes neither finiteness nor the model file."""
    config, d = stores
    missing = (slice(None), slice(1, 3), slice(4, 6), 7)  # two levels of a 2x1 patch, every time
    train_nan = poisoned_copy(d / "train.h5", tmp_path / "train.h5", "hr/t", missing)
    val_nan = poisoned_copy(d / "val.h5", tmp_path / "val.h5", "hr/t", missing)
    out = tmp_path / "deterministic.pt"
    val = train("deterministic", str(train_nan), str(val_nan), str(out), str(tmp_path / "tb"),
                with_train(config, deterministic_steps=6))
    assert math.isfinite(val["rmse_K"]) and out.exists()
    model = load_model(str(out)).eval()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    batch = next(iter(DataLoader(StoreDataset(str(val_nan), PRIORS), batch_size=1000)))
    with torch.no_grad():
        pred = model.denormalise(model(batch["lr_up"], batch["static"], batch["priors"])[:, 0]).double().numpy()
    with h5py.File(val_nan) as f:
        truth = f["hr/t"][:].astype(np.float64)
    present = np.isfinite(truth)
    assert not present.all()
    assert val["rmse_K"] == pytest.approx(np.sqrt(np.mean((pred - truth)[present] ** 2)), rel=1e-4)


def test_a_poisoned_statistic_is_refused_before_training(stores, tmp_path):
    config, d = stores
    bad = poisoned_copy(d / "train.h5", tmp_path / "train.h5", "stats/t/std", 2, 0.0)
    out = tmp_path / "deterministic.pt"
    with pytest.raises(ValueError, match=r"train\.h5.*stats/t/mean, std are not finite and positive"):
        train("deterministic", str(bad), str(d / "val.h5"), str(out), str(tmp_path / "tb"), config)
    assert not out.exists() and not Path(f"{out}.ckpt").exists()


def test_a_non_finite_loss_fails_the_training_and_writes_nothing(stores, tmp_path):
    config, d = stores
    bad = poisoned_copy(d / "train.h5", tmp_path / "train.h5", "priors/theta", (slice(None), 0, 0, 0))
    out = tmp_path / "deterministic.pt"
    with pytest.raises(TrainingDiverged, match=r"deterministic training diverged at step 1: .*NaN or inf in the "
                                               r"inputs or statistics.*learning rate too high"):
        train("deterministic", str(bad), str(d / "val.h5"), str(out), str(tmp_path / "tb"),
              with_train(config, checkpoint_every=1))
    assert not out.exists() and not Path(f"{out}.ckpt").exists()


def train_until_checkpoint(d: Path, out: Path, config: dict, train_store: Path | None = None,
                           timeout: float = 240.0) -> tuple[dict, str]:
    """Run `geodiff train` (on `train_store`, default the train store of `d`) in a process with a checkpoint
    every 2 steps and SIGKILL it as soon as it has written a checkpoint of `config`; return that checkpoint
    and the process's log."""
    expected = TrainConfig.from_config(config, "deterministic").hash
    log = out.parent / f"train-{expected}-{time.monotonic_ns()}.log"
    ckpt_dir = Path(f"{out}.ckpt")
    cmd = [sys.executable, "-m", "geodiff", "train", "--stage", "deterministic", "--train",
           str(train_store or d / "train.h5"), "--val", str(d / "val.h5"), "--out", str(out),
           "--logdir", str(out.parent / "tb"), "--config-json", json.dumps(config), "--device", "cpu",
           "--checkpoint-every", "2"]
    started = time.time()
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            newest = checkpoints(ckpt_dir)[-1][2] if ckpt_dir.is_dir() and checkpoints(ckpt_dir) else None
            if newest is not None and newest.stat().st_mtime > started:  # written by this process
                state = load_checkpoint(newest)
                if state.get("config_hash") == expected:
                    return state, log.read_text()
            assert proc.poll() is None, f"training exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no checkpoint of {expected} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_training_resumes_only_with_the_same_settings(stores, tmp_path):
    """Killed after a checkpoint, then rerun with another learning rate, then another width: each rerun
    moves the old checkpoint aside (kept) and starts at step 0 with its own schedule, never mixing."""
    config, d = stores
    out = tmp_path / "deterministic.pt"
    first = with_train(config, deterministic_steps=100_000)
    state_a, _ = train_until_checkpoint(d, out, first)
    assert state_a["step"] >= 2

    new_lr = with_train(first, lr=first["train"]["lr"] / 4)
    state_b, log_b = train_until_checkpoint(d, out, new_lr)
    stale_a = Path(f"{out}.ckpt.stale-{state_a['config_hash']}")
    assert stale_a.is_dir() and checkpoints(stale_a)[-1][0] >= state_a["step"]  # kept, not deleted
    assert "starts from step 0" in log_b and "resumed" not in log_b
    group = state_b["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == new_lr["train"]["lr"]
    step = state_b["step"]  # within the 50-step warm-up the rate is lr (k + 1)/50 after k steps
    assert group["lr"] == pytest.approx(new_lr["train"]["lr"] * (step + 1) / 50, rel=1e-12)

    wider = copy.deepcopy(new_lr)
    wider["model"]["width"] = 12
    state_c, log_c = train_until_checkpoint(d, out, wider)
    assert Path(f"{out}.ckpt.stale-{state_b['config_hash']}").exists() and stale_a.exists()
    assert "starts from step 0" in log_c and "size mismatch" not in log_c
    shapes = lambda state: [tuple(v.shape) for v in state["model"].values()]  # noqa: E731
    assert shapes(state_c) != shapes(state_b)  # the wider U-Net, trained from scratch


def test_a_killed_training_does_not_resume_on_other_data(stores, tmp_path):
    """Same settings, but the training store was rebuilt from corrected data (+5 K) or other levels: the
    old checkpoint is moved aside and the training starts from step 0 on the new data."""
    config, d = stores
    out = tmp_path / "deterministic.pt"
    cfg = with_train(config, deterministic_steps=100_000)
    state_a, _ = train_until_checkpoint(d, out, cfg)
    corrected = tmp_path / "train-corrected.h5"
    shutil.copy(d / "train.h5", corrected)
    with h5py.File(corrected, "r+") as f:
        f["hr/t"][...] = f["hr/t"][...] + 5.0
    state_b, log_b = train_until_checkpoint(d, out, cfg, train_store=corrected)
    assert "starts from step 0" in log_b and "resumed" not in log_b
    assert Path(f"{out}.ckpt.stale-{state_a['config_hash']}").exists()
    assert state_b["train_sha256"] != state_a["train_sha256"]


def test_run_settings_come_from_the_command_line_first():
    config = {"train": {"device": "cuda", "checkpoint_every": 20, "keep_checkpoints": 3}}
    assert RunSettings.resolve(config) == RunSettings("cuda", 20, 3)
    assert RunSettings.resolve(config, "cpu", 5, 1) == RunSettings("cpu", 5, 1)
    with pytest.raises(KeyError, match="'train.device' is missing"):  # the schema holds the default, no copy here
        RunSettings.resolve({"train": {}}, checkpoint_every=5, keep_checkpoints=1)
    with pytest.raises(KeyError, match="'train.checkpoint_every' is missing"):
        RunSettings.resolve({"train": {}}, "cpu", keep_checkpoints=1)
    with pytest.raises(KeyError, match="'train.keep_checkpoints' is missing"):
        RunSettings.resolve({"train": {}}, "cpu", 5)


def test_a_missing_config_key_is_named(stores):
    config, _ = stores
    broken = copy.deepcopy(config)
    del broken["model"]["residual_width"]
    with pytest.raises(KeyError, match="'model.residual_width' is missing"):
        TrainConfig.from_config(broken, "residual")


@pytest.mark.parametrize("members", ["0", "1"])
def test_sample_refuses_an_ensemble_nothing_can_score(stores, tmp_path, capsys, members):
    _, d = stores
    out = tmp_path / "ensemble.nc"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sample", "--store", str(d / "val.h5"), "--deterministic", "d.pt", "--residual", "r.pt",
                  "--out", str(out), "--members", members])
    assert exit_info.value.code != 0
    assert "ensemble members must be >= 2" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="members must be >= 2"):
        ensemble_prediction(str(d / "val.h5"), "d.pt", "r.pt", members=int(members))
