"""Regular latitude-longitude grids defined by resolution and a box of cell edges.

The fine (HR) grid comes from config `grid.hr`; the coarse (LR) grid is the HR
grid coarsened by `grid.scale_factor`, with cell bounds aligned (DESIGN.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr


@dataclass(frozen=True)
class Grid:
    """A regular grid; `lat`/`lon` are the outer cell edges of the box, degrees.

    Latitudes ascend (degrees north), longitudes ascend in [-180, 180).
    """

    resolution: float  # cell size, degrees
    lat_edges: tuple[float, float]  # southern and northern box edge, degrees north
    lon_edges: tuple[float, float]  # western and eastern box edge, degrees east

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("lat", self.lat_edges), ("lon", self.lon_edges)):
            n = (hi - lo) / self.resolution
            if hi <= lo or abs(n - round(n)) > 1e-6:
                raise ValueError(
                    f"grid: {name} box {lo}..{hi} is not a whole number of {self.resolution} degree cells"
                )
        if self.lat_edges[0] < -90 or self.lat_edges[1] > 90:
            raise ValueError(f"grid: lat box {self.lat_edges} leaves [-90, 90]")
        if self.lon_edges[1] - self.lon_edges[0] > 360:
            raise ValueError(f"grid: lon box {self.lon_edges} spans more than 360 degrees")

    @classmethod
    def from_config(cls, cfg: dict) -> Grid:
        """Build from a config block `{resolution, lat: [s, n], lon: [w, e]}`."""
        return cls(float(cfg["resolution"]), tuple(map(float, cfg["lat"])), tuple(map(float, cfg["lon"])))

    @classmethod
    def from_centres(cls, resolution: float, lat: np.ndarray, lon: np.ndarray) -> Grid:
        """The grid of cells `resolution` degrees wide whose first and last centres are those of `lat` and `lon`."""
        half = resolution / 2
        return cls(resolution, (float(lat[0]) - half, float(lat[-1]) + half), (float(lon[0]) - half, float(lon[-1]) + half))

    @property
    def shape(self) -> tuple[int, int]:
        """(n_lat, n_lon)."""
        return len(self.lat), len(self.lon)

    @property
    def lat_bounds(self) -> np.ndarray:
        """Cell edges along latitude, shape (n_lat + 1,), degrees north."""
        n = round((self.lat_edges[1] - self.lat_edges[0]) / self.resolution)
        return self.lat_edges[0] + self.resolution * np.arange(n + 1)

    @property
    def lon_bounds(self) -> np.ndarray:
        """Cell edges along longitude, shape (n_lon + 1,), degrees east."""
        n = round((self.lon_edges[1] - self.lon_edges[0]) / self.resolution)
        return self.lon_edges[0] + self.resolution * np.arange(n + 1)

    @property
    def lat(self) -> np.ndarray:
        """Cell centres, degrees north, ascending."""
        b = self.lat_bounds
        return 0.5 * (b[:-1] + b[1:])

    @property
    def lon(self) -> np.ndarray:
        """Cell centres, degrees east, ascending; wrapped into [-180, 180) for global grids."""
        b = self.lon_bounds
        return 0.5 * (b[:-1] + b[1:])

    @property
    def is_global_lon(self) -> bool:
        """True when the grid wraps around the globe in longitude (periodic)."""
        return abs(self.lon_edges[1] - self.lon_edges[0] - 360.0) < 1e-9

    def coarsen(self, factor: int) -> Grid:
        """The grid of `factor` x `factor` blocks of this grid, cell edges aligned."""
        nlat, nlon = self.shape
        if nlat % factor or nlon % factor:
            raise ValueError(f"grid: {nlat}x{nlon} cells are not divisible by scale_factor {factor}")
        return Grid(self.resolution * factor, self.lat_edges, self.lon_edges)

    def matches(self, lat: np.ndarray, lon: np.ndarray, atol: float = 1e-4) -> bool:
        """Whether coordinate arrays (degrees) are exactly this grid's centres."""
        return (
            lat.shape == self.lat.shape
            and lon.shape == self.lon.shape
            and np.allclose(lat, self.lat, atol=atol)
            and np.allclose(lon, self.lon, atol=atol)
        )


def grid_pair(grid_config: dict) -> tuple[Grid, Grid]:
    """The (hr, lr) grids of a config block `grid`: `hr` itself, and `hr` coarsened by `scale_factor`.

    The one place where the coarse grid is derived from the fine one.
    """
    hr = Grid.from_config(grid_config["hr"])
    return hr, hr.coarsen(int(grid_config["scale_factor"]))


def grids_from_config(config: dict) -> tuple[Grid, Grid]:
    """(hr, lr) grids of a whole GeoDiff config (see :func:`grid_pair`)."""
    return grid_pair(config["grid"])


def area_weights(lat: xr.DataArray) -> xr.DataArray:
    """Area weights of a regular latitude-longitude grid, w = cos(lat) / mean cos(lat) over the latitudes given, 1."""
    w = np.cos(np.deg2rad(lat))
    return w / w.mean()
