"""pointcell: cell detection and instance segmentation from point labels only."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pointcell")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
