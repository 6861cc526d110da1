"""A torch Dataset over the HDF5 store: random access, normalised, optional random crops."""

from __future__ import annotations

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from geodiff.constants import STATICS


def read_stats(path: str, names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (mean, std)} from a store's `stats/` group."""
    with h5py.File(path, "r") as f:
        return {n: (f[f"stats/{n}/mean"][()], f[f"stats/{n}/std"][()]) for n in names}


def store_info(path: str) -> dict:
    """Levels (hPa), prior names, shapes and whether `hr/z` is present."""
    with h5py.File(path, "r") as f:
        return {
            "levels": f["level"][()].astype(np.float64),
            "priors": sorted(f["priors"].keys()) if "priors" in f else [],
            "n_samples": f["hr/t"].shape[0],
            "shape": f["hr/t"].shape[1:],
            "has_z": "hr/z" in f,
        }


class StoreDataset(Dataset):
    """Samples of a store as normalised float32 tensors.

    Each item: `lr_up` [1, L, H, W] and `hr` [1, L, H, W] (normalised with the `t` stats),
    `priors` [P, L, H, W] (each with its own stats), `static` [S, H, W], `index`, and
    `z` [L, H, W] (m2 s-2, physical) when the store has it. The HDF5 file is opened
    lazily in each process, so DataLoader workers and DDP ranks each hold their own handle.
    """

    def __init__(self, path: str, prior_names: list[str] | None = None, crop: int | None = None):
        info = store_info(path)
        self.path = path
        self.prior_names = info["priors"] if prior_names is None else list(prior_names)
        missing = set(self.prior_names) - set(info["priors"])
        if missing:
            raise KeyError(f"{path}: priors {sorted(missing)} are not in the store (has {info['priors']})")
        self.length = info["n_samples"]
        self.has_z = info["has_z"]
        self.crop = crop
        stats = read_stats(path, ["t", *self.prior_names, *STATICS])
        self.t_mean, self.t_std = (s[:, None, None] for s in stats["t"])
        self.prior_stats = [tuple(s[:, None, None] for s in stats[n]) for n in self.prior_names]
        with h5py.File(path, "r") as f:
            self.static = np.stack([(f[f"static/{n}"][()] - stats[n][0]) / stats[n][1] for n in STATICS]).astype(np.float32)
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return self.length

    def _h5(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None  # each worker opens its own handle
        return state

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f = self._h5()
        window = self._window(f["hr/t"].shape[-2:])
        hr = (f["hr/t"][(i, slice(None), *window)] - self.t_mean) / self.t_std
        lr_up = (f["lr_up/t"][(i, slice(None), *window)] - self.t_mean) / self.t_std
        priors = [(f[f"priors/{n}"][(i, slice(None), *window)] - m) / s for n, (m, s) in zip(self.prior_names, self.prior_stats)]
        item = {
            "hr": torch.from_numpy(hr[None].astype(np.float32)),
            "lr_up": torch.from_numpy(lr_up[None].astype(np.float32)),
            "priors": torch.from_numpy(np.stack(priors).astype(np.float32)) if priors else torch.zeros(0),
            "static": torch.from_numpy(self.static[(slice(None), *window)].copy()),
            "index": torch.tensor(i),
        }
        if self.has_z:
            item["z"] = torch.from_numpy(f["hr/z"][(i, slice(None), *window)].astype(np.float32))
        return item

    def _window(self, hw: tuple[int, int]) -> tuple[slice, slice]:
        if self.crop is None or self.crop >= min(hw):
            return slice(None), slice(None)
        y, x = (int(torch.randint(0, n - self.crop + 1, ())) for n in hw)  # torch seeds each worker apart
        return slice(y, y + self.crop), slice(x, x + self.crop)
