"""feddx: personalized, federated LLMs for medical diagnosis.

The package mirrors the pipeline: ``data`` -> ``model``/``train`` -> ``federated`` ->
``personalize`` -> ``evaluate``/``serve``. Lower layers never import higher ones.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("feddx")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
