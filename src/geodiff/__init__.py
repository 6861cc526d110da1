"""GeoDiff: physics-aware diffusion downscaling of temperature on pressure levels."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geodiff")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
