"""The one exception family of medseg.

Every message names the file or field at fault and says what to do about it.
"""


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class InputError(MedsegError):
    """A file or array given by the user cannot be used as it is (missing, corrupt, mismatched)."""


class GeometryError(InputError):
    """Two things that must share a voxel grid (image and labels, volume and prompts) do not."""


class ConfigError(MedsegError):
    """A manifest, pipeline YAML or option has a bad field."""


class WeightsError(MedsegError):
    """A model checkpoint is missing, fails verification or does not fit the architecture."""


class Cancelled(Exception):
    """A long call stopped because its ``should_stop()`` said so (see ``medseg.runtime``).

    Not a ``MedsegError``: nothing is wrong. The call left nothing half-done before raising.
    """
