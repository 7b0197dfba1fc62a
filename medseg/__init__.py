"""medseg: segment CT and MRI volumes with SAM2, reference prompting and Mask R-CNN."""

from medseg.errors import Cancelled, ConfigError, GeometryError, InputError, MedsegError, WeightsError
from medseg.geometry import Geometry
from medseg.prompts import Prompts
from medseg.volume import UNTRAINED_BANNER, InstanceMap, LabelVolume, Volume

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "ConfigError",
    "Geometry",
    "GeometryError",
    "InputError",
    "InstanceMap",
    "LabelVolume",
    "MedsegError",
    "Prompts",
    "UNTRAINED_BANNER",
    "Volume",
    "WeightsError",
    "__version__",
]
