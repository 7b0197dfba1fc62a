"""medseg in napari: open CT/MRI volumes with their geometry, segment them with SAM2,
reference prompting or the Mask R-CNN baseline, score them, and save aligned labels.

Contributions are declared in ``napari.yaml`` (npe2); the modules hold no algorithm and call
the ``medseg`` library.
"""

import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)


def _load_triton_with_its_own_llvm() -> None:
    """Import triton so that its bundled LLVM cannot clash with Mesa's.

    napari's OpenGL canvas on Mesa (llvmpipe under Xvfb or remote X, radeonsi, iris) loads
    Mesa's ``libLLVM`` into the process; importing triton afterwards (torch pulls it in through
    ``torch._dynamo`` when MONAI or torchvision load) then crashes the whole viewer with a
    segmentation fault while its LLVM registers itself. ``RTLD_DEEPBIND`` makes triton's
    library resolve its own LLVM first. This runs when napari first imports the plugin, before
    any medseg module loads torch.
    """
    if "triton" in sys.modules or not hasattr(os, "RTLD_DEEPBIND") or importlib.util.find_spec("triton") is None:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import triton  # noqa: F401
    except ImportError as error:  # a broken triton: torch then runs without it
        log.debug("triton not loaded: %s", error)
    finally:
        sys.setdlopenflags(flags)


_load_triton_with_its_own_llvm()
