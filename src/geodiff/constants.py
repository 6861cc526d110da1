"""Physical constants and canonical names, defined once for the whole package.

Values follow DESIGN.md section 5 (ECMWF IFS constants).
"""

R_D = 287.04
"""Gas constant of dry air, J kg-1 K-1."""
C_P = 1004.64
"""Specific heat of dry air at constant pressure, J kg-1 K-1."""
KAPPA = R_D / C_P
"""Poisson constant R_d / c_p, dimensionless."""
G = 9.80665
"""Standard gravity, m s-2."""
P0_HPA = 1000.0
"""Reference pressure of potential temperature, hPa."""

TIME, LEVEL, LAT, LON = "time", "level", "lat", "lon"
"""Canonical dimension names (DESIGN.md section 3)."""
DIMS = (TIME, LEVEL, LAT, LON)
STATICS = ("orography", "lsm")
"""Fine-grid static fields known at inference time."""
POSITION_CHANNELS = {"none": 0, "latlon": 4}
"""Static channels that encode a cell's position, by config ``model.position``
(:func:`geodiff.data.loader.position_channels`: sin and cos of latitude and longitude)."""

CF_ATTRS = {
    "t": {"units": "K", "standard_name": "air_temperature", "long_name": "Air temperature"},
    "z": {"units": "m2 s-2", "standard_name": "geopotential", "long_name": "Geopotential"},
    "orography": {"units": "m", "standard_name": "surface_altitude", "long_name": "Orography height"},
    "lsm": {"units": "1", "standard_name": "land_area_fraction", "long_name": "Land-sea mask (fraction of land)"},
    LEVEL: {"units": "hPa", "standard_name": "air_pressure", "long_name": "Pressure level", "positive": "down", "axis": "Z"},
    LAT: {"units": "degrees_north", "standard_name": "latitude", "long_name": "Latitude", "axis": "Y"},
    LON: {"units": "degrees_east", "standard_name": "longitude", "long_name": "Longitude", "axis": "X"},
}
"""CF attributes of canonical variables and coordinates."""

BUNDLE = "bundle.json"
"""File name of a trained model's bundle in its models folder (geodiff.downscale.bundle)."""

HPA_TO_PA = 100.0
"""Pascal per hectopascal."""

STORE_LAYOUT = 3
"""Version of the HDF5 store's layout (geodiff.data.store; 2: the coarse input `lr/t` and its
coordinates added; 3: a split's store is virtual datasets over one file per month). Part of the
store stage's config hash, so a store of an older layout is rebuilt, and a global attribute of
the store."""

PHYSICS_TERMS = ("stability", "gradient", "coupling")
"""The physics terms of the U-Net's loss (config loss.<term>): what the no_physics_loss ablation
switches off and loss.ramp ramps in; the Charbonnier data term is the other one."""
