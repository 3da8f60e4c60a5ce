"""galspec-batch: galaxy spectra from multi-band images, at survey scale."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("galspec-batch")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
