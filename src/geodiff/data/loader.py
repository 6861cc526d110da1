"""A torch Dataset over the HDF5 store: random access, normalised, optional random crops."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from geodiff.constants import STATICS
from geodiff.data.store import FULL, SampleReader, Window, read_statics, read_stats, store_coords, store_info


class StoreDataset(Dataset):
    """Samples of a store as normalised float32 tensors.

    Each item: `lr_up` [1, L, H, W] and `hr` [1, L, H, W] (normalised with the `t` stats),
    `hr_mask` [1, L, H, W], `priors` [P, L, H, W] (each with its own stats), `static`
    [S, H, W] (the normalised statics, then the `position` channels: :func:`static_fields`), `index`, `seed` and `z` [L, H, W] (m2 s-2, physical) when the store has it.

    An item is read by its index, or by ``(index, epoch)`` as the training sampler
    (:class:`geodiff.train.sampler.EpochSampler`) asks for it; a bare index is epoch 0.
    ``seed`` is :func:`sample_seed` of (`seed`, epoch, index): the crop window is drawn
    from it, and the diffusion training draws the sample's noise from it, so a sample's
    random numbers are the same whichever rank, worker or resumed run reads it.

    Missing truth (NaN in `hr/t`, or in `hr/z` when present, kept by the store): `hr_mask`
    is 1 where the truth is present and 0 where it is missing; there `hr` holds the
    `lr_up` value, and a missing `z` holds 0. These are placeholders, finite so that no
    NaN reaches a loss or its gradient: a loss must weight its terms by `hr_mask`. The
    HDF5 file is opened lazily in each process, so DataLoader workers and DDP ranks each
    hold their own handle.
    """

    def __init__(self, path: str, prior_names: list[str] | None = None, crop: int | None = None, seed: int = 0,
                 position: str = "none"):
        info = store_info(path)
        self.path = path
        self.prior_names = info["priors"] if prior_names is None else list(prior_names)
        missing = set(self.prior_names) - set(info["priors"])
        if missing:
            raise KeyError(f"{path}: priors {sorted(missing)} are not in the store (has {info['priors']})")
        self.length = info["n_samples"]
        self.hw = info["shape"][1:]
        self.has_z = info["has_z"]
        self.scale = info["scale_factor"]
        if crop is not None and crop % self.scale:
            raise ValueError(f"{path}: train.crop {crop} is not a multiple of the store's scale factor {self.scale}: "
                             "a patch must hold whole coarse cells")
        self.crop = crop
        self.seed = seed
        stats = read_stats(path, ["t", *self.prior_names, *STATICS])
        self.t_mean, self.t_std = (s[:, None, None] for s in stats["t"])
        self.prior_stats = [tuple(s[:, None, None] for s in stats[n]) for n in self.prior_names]
        coords = store_coords(path)
        self.static = static_fields(read_statics(path, list(STATICS)), {n: stats[n] for n in STATICS},
                                    coords["lat"].values, coords["lon"].values, position)
        self._reader = SampleReader(path)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        seed = sample_seed(self.seed, epoch, i)
        window = self._window(seed)
        read = self._reader.read
        hr, lr_up = read("hr/t", i, window), read("lr_up/t", i, window)
        valid = np.isfinite(hr)
        if self.has_z:
            z = read("hr/z", i, window)
            valid &= np.isfinite(z)
        hr = np.where(valid, hr, lr_up)
        priors = [(read(f"priors/{n}", i, window) - m) / s for n, (m, s) in zip(self.prior_names, self.prior_stats)]
        item = {
            "hr": torch.from_numpy(((hr - self.t_mean) / self.t_std)[None].astype(np.float32)),
            "hr_mask": torch.from_numpy(valid[None].astype(np.float32)),
            "lr_up": torch.from_numpy(((lr_up - self.t_mean) / self.t_std)[None].astype(np.float32)),
            "priors": torch.from_numpy(np.stack(priors).astype(np.float32)) if priors else torch.zeros(0),
            "static": torch.from_numpy(self.static[(slice(None), *window)].copy()),
            "index": torch.tensor(i),
            "seed": torch.tensor(seed),
        }
        if self.has_z:
            item["z"] = torch.from_numpy(np.where(np.isfinite(z), z, 0.0).astype(np.float32))
        return item

    def _window(self, seed: int) -> Window:
        """The sample's crop, made of whole coarse cells: its centre a coarse cell drawn uniformly from the
        field, the window moved back inside the field where it would stick out.

        Whole coarse cells: a window starting inside a coarse cell shifts the pattern of the interpolated
        input (and of its error) against the U-Net's pooling grid, which in whole fields and aligned tiles
        always meets coarse cells the same way. Patches of 24 cells of the default box went from 0.344 and
        0.353 K to 0.333 and 0.332 K validation RMSE (seeds 42 and 43), against 0.317 and 0.318 K for
        whole fields; 32-cell patches of a 64-cell box from 0.439, 0.365 and 0.444 K to 0.392, 0.345 and
        0.437 K (seeds 42-44), against 0.407, 0.435 and 0.435 K (benchmarks/crop_training.py, README).
        Centre uniform: a field's edge cells are then in a crop about half as often as its middle ones,
        where a uniformly placed window holds them once in n - crop + 1 draws, and the network meets the
        field's edges, where the interpolated input is least right, far more often."""
        if self.crop is None or self.crop >= min(self.hw):
            return FULL
        cells = self.crop // self.scale
        centre = np.random.default_rng(seed).integers(0, [n // self.scale for n in self.hw])
        y, x = (self.scale * int(np.clip(c - cells // 2, 0, n // self.scale - cells)) for c, n in zip(centre, self.hw))
        return slice(y, y + self.crop), slice(x, x + self.crop)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed (63 bits, fits int64) for the random draws of sample `index` in `epoch` of a run seeded `seed`."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def position_channels(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """sin and cos of each cell's latitude and longitude [4, H, W] (config ``model.position: latlon``)."""
    phi, lam = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    return np.stack([np.sin(phi), np.cos(phi), np.sin(lam), np.cos(lam)])


def static_fields(statics: dict[str, np.ndarray], stats: dict[str, tuple[np.ndarray, np.ndarray]], lat: np.ndarray,
                  lon: np.ndarray, position: str) -> np.ndarray:
    """The `static` input of the networks [S, H, W], float32: each of :data:`STATICS` normalised with its
    (mean, std) from `stats`, then the channels of `position` (config ``model.position``, which the
    schema holds to the keys of :data:`geodiff.constants.POSITION_CHANNELS`) on the grid of `lat`,
    `lon` (degrees)."""
    fields = [(statics[n] - stats[n][0]) / stats[n][1] for n in STATICS]
    if position == "latlon":
        fields.extend(position_channels(lat, lon))
    return np.stack(fields).astype(np.float32)
