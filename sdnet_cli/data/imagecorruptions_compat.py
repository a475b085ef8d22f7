"""Make the ``imagecorruptions`` package importable and runnable on current stacks.

``imagecorruptions`` 1.1.2 (its latest release) imports ``pkg_resources`` (gone from
setuptools >= 81), imports ``scipy.ndimage.interpolation`` (deprecated, to be removed
in SciPy 2), calls ``skimage.filters.gaussian(..., multichannel=True)`` (removed from
scikit-image) and uses ``np.float_`` (removed in NumPy 2); and its impulse noise calls
``skimage.util.random_noise``, which current scikit-image seeds from fresh OS entropy rather than
numpy's global RNG, so seeding that RNG no longer made it repeatable. Instead of editing
site-packages we load it with temporary import shims and patch the few names that
its ``corruptions`` module looks up at call time, inside that module only, so the
rest of the process sees unmodified numpy / scikit-image / pkg_resources.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.resources
import importlib.util
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import skimage.color
import skimage.filters
import skimage.util


def _resource_filename(package_or_requirement: str, resource_name: str) -> str:
    """Minimal ``pkg_resources.resource_filename``: a file inside an installed package.

    imagecorruptions passes its *module* name (``imagecorruptions.corruptions``) and a
    relative path such as ``./frost/frost1.png``; like pkg_resources, a plain module
    resolves relative to the package that contains it.
    """
    module = importlib.import_module(package_or_requirement)
    package = package_or_requirement if hasattr(module, "__path__") else (module.__package__ or package_or_requirement)
    parts = [p for p in resource_name.split("/") if p not in ("", ".")]
    return str(importlib.resources.files(package).joinpath(*parts))


@contextlib.contextmanager
def _temporary_modules(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    """Put shim modules in ``sys.modules`` for one import, then take them out again.

    imagecorruptions binds the names it needs at import time, so the shims need not
    outlive the import, and other code keeps seeing that these modules do not exist.
    """
    added = [name for name in modules if name not in sys.modules]
    for name in added:
        sys.modules[name] = modules[name]
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _import_shims() -> dict[str, types.ModuleType]:
    """Stand-ins for the modules imagecorruptions imports that this stack lacks."""
    shims: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("pkg_resources") is None:
        pkg_resources = types.ModuleType("pkg_resources")
        pkg_resources.resource_filename = _resource_filename  # type: ignore[attr-defined]
        shims["pkg_resources"] = pkg_resources
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module("scipy.ndimage.interpolation")
    except ImportError:
        import scipy.ndimage

        interpolation = types.ModuleType("scipy.ndimage.interpolation")
        interpolation.map_coordinates = scipy.ndimage.map_coordinates  # type: ignore[attr-defined]
        shims["scipy.ndimage.interpolation"] = interpolation
    return shims


def _gaussian(image: np.ndarray, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> np.ndarray:
    """``skimage.filters.gaussian`` that still understands the removed ``multichannel``."""
    if multichannel:
        kwargs.setdefault("channel_axis", -1)
    return cast(np.ndarray, skimage.filters.gaussian(image, *args, **kwargs))


def _random_noise(image: np.ndarray, *args: Any, rng: Any = None, **kwargs: Any) -> np.ndarray:
    """``skimage.util.random_noise`` seeded from numpy's global RNG, which our callers seed."""
    if rng is None:
        rng = int(np.random.randint(0, 2**31 - 1))
    return cast(np.ndarray, skimage.util.random_noise(image, *args, **{**kwargs, "rng": rng}))


class _NumpyWithFloatAlias(types.ModuleType):
    """A view of numpy that also has ``float_``, seen only by imagecorruptions."""

    float_ = np.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@functools.cache
def load_imagecorruptions() -> types.ModuleType:
    """Import and patch ``imagecorruptions`` once; return the package module.

    Later calls return the same module object without patching again.
    """
    with _temporary_modules(_import_shims()), warnings.catch_warnings():
        # pkg_resources (where still installed) and scipy's old namespace warn on import
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        package = importlib.import_module("imagecorruptions")
    corruptions = importlib.import_module("imagecorruptions.corruptions")
    corruptions.gaussian = _gaussian  # type: ignore[attr-defined]
    # the module reaches scikit-image only as sk.util.random_noise and sk.color.*
    skimage_view = types.SimpleNamespace(util=types.SimpleNamespace(random_noise=_random_noise), color=skimage.color)
    corruptions.sk = skimage_view  # type: ignore[attr-defined]
    if not hasattr(np, "float_"):
        corruptions.np = _NumpyWithFloatAlias("numpy")  # type: ignore[attr-defined]
    return package
