"""The one patch below every layer: torchvision's compiled ops on a CPU build of torch.

vtt's pins install torch 2.13.0 (on a CPU machine its CPU build, torch 2.13.0+cpu) and torchvision 0.28.0,
whose PyPI wheel is built against CUDA torch: its `_C` extension cannot load beside a CPU torch, and
`import torchvision` then fails registering fake kernels for two ops that were never defined
("operator torchvision::nms does not exist"). Every transformers video processor imports torchvision
for its transforms (resize, normalise), which need none of the compiled ops. So, only where torch has no
CUDA and torchvision's extension cannot load, the two op schemas are defined before torchvision imports:
its Python transforms load, and `torchvision.ops.nms` raises if ever called. A CUDA torch (every GPU
node, the CUDA image) or a matching CPU torchvision is left alone.

    vtt/__init__.py installs the guard; it imports nothing until torchvision itself is imported.
    `install_startup_guard()` (make setup, docker/install.sh) also has every Python of the environment
    install it at start, for scripts that import transformers before (or without) vtt.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

WRITTEN_FOR = {"torchvision": "0.28.0"}
SCHEMAS = (  # the ops torchvision/_meta_registrations.py registers fakes for at import
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_defined: list = []  # the Library that holds the schemas lives as long as the process


def extension_loads() -> bool:
    """Whether torchvision's compiled extension loads beside the installed torch (imports torch, not torchvision)."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to guard
    from pathlib import Path

    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"))
    if not found:
        return True
    try:
        torch.ops.load_library(str(found[0]))
    except OSError:  # libtorch_cuda.so and the like: built for a CUDA torch
        return False
    return True


def define_missing_ops() -> bool:
    """Define SCHEMAS when torchvision's extension cannot load; True when they were defined here."""
    import torch

    if torch.version.cuda is not None or extension_loads():
        return False
    library = torch.library.Library("torchvision", "DEF")
    for schema in SCHEMAS:
        library.define(schema)
    _defined.append(library)
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs define_missing_ops once, the first time anything imports torchvision."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" and self in sys.meta_path:
            sys.meta_path.remove(self)
            define_missing_ops()
        return None  # the normal finders import it


def guard_torchvision_import() -> None:
    if "torchvision" not in sys.modules and not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())


STARTUP_FILE = "vtt-torchvision-guard.pth"


def install_startup_guard() -> str:
    """Make every Python of this environment install the guard at start, not only those that import vtt.

    A user's own script (or a test's subprocess) that imports transformers before vtt would otherwise
    fail as above. site.py runs `import` lines of a .pth file in site-packages at start; the guard itself
    stays lazy (vtt/__init__ imports nothing heavy). Written only where the mismatch is; returns what it did.
    """
    import sysconfig
    from pathlib import Path

    startup = Path(sysconfig.get_paths()["purelib"]) / STARTUP_FILE
    import torch

    if torch.version.cuda is not None or extension_loads():
        startup.unlink(missing_ok=True)
        return f"torchvision loads beside torch {torch.__version__}: no start-up guard"
    startup.write_text("import vtt\n")
    return f"torchvision's extension cannot load beside torch {torch.__version__}: wrote {startup}"
