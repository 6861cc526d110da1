"""`geodiff downscale`: the GeoDiff ensemble of coarse data that has no fine truth.

For each time step of the input: the coarse field on the model's coarse grid
(:mod:`geodiff.downscale.inputs`), upsampled to the fine grid by the model's method, the
priors computed from it (:func:`geodiff.physics.priors.compute_priors`, as in the store),
the statics of the box, all normalised with the bundle's statistics; then the U-Net's field
and M residual draws, each over the whole domain tile by tile (:mod:`geodiff.downscale.tiles`),
the model's hard constraint, and a self-check.

Distributed over (time, member) pairs: under torchrun, srun or mpirun, rank r of W takes
the pairs r, r + W, ... of the time-major list, and every pair draws its noise from its own
generator seeded by (seed, time, member) (:func:`pair_seed`), so the file is the same
whatever the number of ranks (with the same threads per process: a different thread count
may change the last bits of a convolution). Rank 0 gathers the fields and writes the file.

The self-check: the conservative coarsening of the ensemble mean against the coarse input,
RMSE and largest difference (K), in the file's attributes and the log. With the additive
constraint both are rounding (~1e-5 K); without it they say how far the model moved the
large scales, to be compared with bicubic interpolation's own mismatch (a few tenths of K).
"""

from __future__ import annotations

import logging
import time
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import xarray as xr
from tqdm import tqdm

from geodiff import __version__
from geodiff.constants import CF_ATTRS, LAT, LEVEL, LON, STATICS, TIME
from geodiff.data.files import write_netcdf
from geodiff.data.grid import Grid
from geodiff.data.loader import static_fields
from geodiff.data.regrid import Regridder
from geodiff.device import bf16_autocast
from geodiff.downscale.bundle import Bundle, load_bundle
from geodiff.downscale.inputs import box_statics, grid_of, model_grids, on_coarse_grid, read_input
from geodiff.downscale.tiles import TiledDenoiser, Tiling
from geodiff.evaluate.constraint import conserve
from geodiff.model.edm import SAMPLERS
from geodiff.physics.priors import compute_priors
from geodiff.train.distributed import cleanup, init_distributed, is_main

log = logging.getLogger(__name__)

TILE, OVERLAP = 128, 48
"""Default tile side and overlap, fine cells (config downscale.tile, downscale.overlap)."""
REALIZATION = "realization"


def pair_seed(seed: int, when: np.datetime64, member: int) -> int:
    """The seed of member `member` at time `when`: the same whichever rank draws it and whatever else the input holds."""
    seconds = int(np.datetime64(when, "s").astype(np.int64)) % 2**62
    return int(np.random.SeedSequence([seed, seconds, member]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class Domain:
    """The model inputs of one box, built one time step at a time."""

    def __init__(self, bundle: Bundle, coarse: xr.DataArray, hr: Grid, lr: Grid, statics: xr.Dataset, device: str):
        self.bundle, self.coarse, self.device = bundle, coarse, device
        self.upsample = Regridder(lr, hr, bundle.meta["upsample"])
        stats = {n: bundle.stats(n) for n in STATICS}
        static = static_fields({n: statics[n].values for n in STATICS}, stats, hr.lat, hr.lon, bundle.position)
        self.static = torch.from_numpy(static)[None].to(device)

    def inputs(self, i: int) -> dict[str, torch.Tensor]:
        """`lr_up` [1, 1, L, H, W], `priors` [1, P, L, H, W] (normalised) and `static` [1, S, H, W] of time step `i`."""
        model = self.bundle.deterministic
        fine = self.upsample(self.coarse.isel({TIME: i})).values.astype(np.float32)  # [L, H, W], K
        lr_up = (torch.from_numpy(fine).to(self.device) - model.t_mean[:, None, None]) / model.t_std[:, None, None]
        names = self.bundle.prior_names
        priors = compute_priors(fine[None], self.bundle.levels, names)
        normalised = []
        for name in names:
            mean, std = self.bundle.stats(name)
            normalised.append((priors[name][0] - mean[:, None, None]) / std[:, None, None])
        p = torch.from_numpy(np.stack(normalised).astype(np.float32))[None] if names else torch.zeros(0)
        return {"lr_up": lr_up[None, None].float(), "priors": p.to(self.device), "static": self.static}


@torch.no_grad()
def generate(bundle: Bundle, domain: Domain, pairs: list[tuple[int, int]], tiling: Tiling, steps: int, seed: int,
             show: bool) -> dict[tuple[int, int], np.ndarray]:
    """{(time index, member): temperature [L, H, W], K} for `pairs` (time-major)."""
    det_model, residual = bundle.deterministic, bundle.residual
    sampler = SAMPLERS[bundle.meta["sampler"]["sampler"]]
    denoiser = TiledDenoiser(residual, tiling)
    times = domain.coarse[TIME].values
    out = {}
    bar = tqdm(total=len(pairs), desc="downscale", unit="member", disable=not show, mininterval=5)
    for i, group in groupby(pairs, key=lambda pair: pair[0]):
        batch = domain.inputs(i)
        det = tiling.blend(det_model, batch["lr_up"], batch["static"], batch["priors"])
        cond = residual.condition(det, batch)
        for _, m in group:
            generator = torch.Generator(domain.device).manual_seed(pair_seed(seed, times[i], m))
            with bf16_autocast(domain.device):
                draw = sampler(denoiser, cond, batch["priors"] if batch["priors"].numel() else None, num_steps=steps,
                               S_churn=bundle.meta["sampler"]["s_churn"], generator=generator)
            out[(i, m)] = det_model.denormalise((det + residual.unscale(draw))[0, 0]).cpu().numpy()
            bar.update()
    bar.close()
    return out


def downscale(model_dir: str, inputs: list[str], out_path: str, members: int | None = None, statics: str | None = None,
              box: list[float] | None = None, steps: int | None = None, tile: int | None = TILE, overlap: int = OVERLAP,
              seed: int = 0, device: str = "auto", constraint: str | None = None) -> None:
    """Downscale the coarse `inputs` with the bundle in `model_dir` and write `out_path` (rank 0).

    `members`, `steps` and `constraint` default to the bundle's (its run's evaluate.ensemble_size,
    evaluate.sampler_steps, model.constraint); `tile` None: the whole domain at once.
    """
    ctx = init_distributed(device)
    try:
        start = time.perf_counter()
        bundle = load_bundle(model_dir, ctx.device)
        members = members or int(bundle.meta["sampler"]["ensemble_size"])
        steps = steps or int(bundle.meta["sampler"]["sampler_steps"])
        constraint = constraint or bundle.meta["constraint"]
        _check_tile(tile, overlap, bundle)
        ds, origin = read_input(inputs, bundle.levels)
        source = grid_of(ds, origin)
        hr, lr = model_grids(bundle.meta["resolution"], bundle.meta["scale_factor"], box, source)
        coarse, how = on_coarse_grid(ds, source, lr, origin)
        statics_ds = _on_rank0(ctx, lambda: box_statics(statics, bundle.meta["statics_source"], hr, Path(out_path).parent))
        domain = Domain(bundle, coarse, hr, lr, statics_ds, ctx.device)
        tiling = Tiling(hr.shape, tile, overlap)
        pairs = [(i, m) for i in range(coarse.sizes[TIME]) for m in range(members)]
        log.info("downscale %s: %d times x %d members on %dx%d fine cells (%g°), %d levels, %d tile(s); rank %d/%d takes %d pairs",
                 origin, coarse.sizes[TIME], members, *hr.shape, hr.resolution, len(bundle.levels), len(tiling),
                 ctx.rank, ctx.world_size, len(pairs[ctx.rank::ctx.world_size]))
        fields = generate(bundle, domain, pairs[ctx.rank::ctx.world_size], tiling, steps, seed, is_main(ctx))
        if ctx.world_size > 1:
            gathered = [None] * ctx.world_size if is_main(ctx) else None
            dist.gather_object(fields, gathered, dst=0)
            if is_main(ctx):
                fields = {k: v for part in gathered for k, v in part.items()}
        if not is_main(ctx):
            return
        t = xr.DataArray(np.stack([np.stack([fields[(i, m)] for i in range(coarse.sizes[TIME])]) for m in range(members)]),
                         dims=(REALIZATION, TIME, LEVEL, LAT, LON),
                         coords={REALIZATION: np.arange(members), TIME: coarse[TIME].values, LEVEL: bundle.levels,
                                 LAT: hr.lat, LON: hr.lon})
        coarsen = Regridder(hr, lr, "conservative")
        if constraint == "additive":
            t = conserve(t, coarse, coarsen)
        check = self_check(t.mean(REALIZATION), coarse, coarsen)
        log.info("self-check: the ensemble mean coarsened against the coarse input: RMSE %.2e K, largest |difference| %.2e K",
                 *check)
        attrs = {
            "method": "geodiff_downscale", "geodiff_version": __version__, "config_hash": bundle.meta["config_hash"],
            "run_name": bundle.meta["run_name"], "input_files": ", ".join(Path(p).name for p in inputs),
            "input_regrid": how, "statics": Path(statics).name if statics else f"{bundle.meta['statics_source']['data']['source']} source of the model",
            "box_lat": list(hr.lat_edges), "box_lon": list(hr.lon_edges), "members": members,
            "sampler": bundle.meta["sampler"]["sampler"], "sampler_steps": steps, "seed": seed,
            "tile": tile or 0, "tile_overlap": overlap, "constraint": constraint,
            "self_check_rmse_K": check[0], "self_check_max_abs_K": check[1],
            "self_check": "conservative coarsening of t_mean against the coarse input on the model's coarse grid",
            "seconds": round(time.perf_counter() - start, 2), "ranks": ctx.world_size,
        }
        write_netcdf(ensemble_dataset(t, attrs), out_path, chunks={REALIZATION: 1, TIME: 1})
    finally:
        cleanup()


def self_check(mean: xr.DataArray, coarse: xr.DataArray, coarsen: Regridder) -> tuple[float, float]:
    """(RMSE, largest absolute difference), K, of the conservative coarsening of `mean` against `coarse`."""
    diff = coarsen(mean.astype(np.float64)) - coarse.assign_coords({LAT: coarsen.target.lat, LON: coarsen.target.lon})
    return float(np.sqrt((diff**2).mean())), float(np.abs(diff).max())


def ensemble_dataset(t: xr.DataArray, attrs: dict) -> xr.Dataset:
    """CF dataset: `t` [realization, time, level, lat, lon], its member mean `t_mean` and standard deviation
    `t_spread` (ddof 1), K."""
    t = t.astype(np.float32).assign_attrs(CF_ATTRS["t"])
    # no cell_methods: CF names only dimensions or coordinates of the variable itself there
    mean = t.mean(REALIZATION).assign_attrs(CF_ATTRS["t"], long_name="Air temperature, ensemble mean")
    spread = t.std(REALIZATION, ddof=1).assign_attrs(units="K", long_name="Air temperature, ensemble standard deviation")
    ds = xr.Dataset({"t": t, "t_mean": mean.astype(np.float32), "t_spread": spread.astype(np.float32)})
    ds = ds.assign_coords({
        REALIZATION: (REALIZATION, t[REALIZATION].values, {"standard_name": "realization", "long_name": "ensemble member", "units": "1"}),
        TIME: (TIME, t[TIME].values, {"standard_name": "time", "axis": "T"}),
        LEVEL: (LEVEL, t[LEVEL].values, CF_ATTRS[LEVEL]), LAT: (LAT, t[LAT].values, CF_ATTRS[LAT]),
        LON: (LON, t[LON].values, CF_ATTRS[LON]),
    })
    return ds.assign_attrs(attrs, title="GeoDiff downscaled air temperature ensemble",
                           source=f"GeoDiff {__version__}: downscaled from coarse input")


def _check_tile(tile: int | None, overlap: int, bundle: Bundle) -> None:
    """A tile must be a whole number of the U-Nets' coarsest cells (2^depth fine cells), and tiles must start
    on the coarse grid (tile and overlap whole coarse cells), as the fields and patches of training did: a
    tile that starts inside a coarse cell meets the interpolated input's pattern shifted against the
    U-Net's pooling grid (see :meth:`geodiff.data.loader.StoreDataset._window`)."""
    if tile is None:
        return
    cell = 2 ** max(bundle.deterministic.arch["depth"], bundle.residual.arch["depth"])
    if tile < cell or tile % cell:
        raise ValueError(f"downscale tile {tile}: must be a multiple of {cell} fine cells (2^model.depth)")
    scale = int(bundle.meta["scale_factor"])
    if tile % scale or overlap % scale:
        raise ValueError(f"downscale tile {tile}, overlap {overlap}: both must be multiples of the scale factor {scale}, "
                         "so that every tile starts on the coarse grid")


def _on_rank0(ctx, make):
    """`make()` on rank 0, its result sent to every rank (one download of the statics, not one per rank)."""
    if ctx.world_size == 1:
        return make()
    box = [make() if is_main(ctx) else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
