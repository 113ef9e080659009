"""Time series as VTK files: reading a ParaView ``.pvd`` collection of ``.vti`` images into a
:class:`~srn_core.series.TimeSeries`, and writing one (a ``.vti`` per step and the ``.pvd`` that lists them).

The ``.pvd`` is plain XML (``<VTKFile type="Collection"><Collection><DataSet timestep= file=/>``), parsed by
:func:`srn_core.series_readers.pvd_entries`; each step is read with :func:`.vtk_image.read_vti`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np
from vtkmodules.vtkCommonDataModel import vtkImageData

from srn_core.geometry import ImageGeometry
from srn_core.modelfile import atomic_write
from srn_core.series import TimeSeries
from srn_core.series_readers import pvd_entries, read_file_series

from .vtk_image import image_from_array, read_vti, write_vti

DEFAULT_SERIES_NAME = "series"
"""The collection's name when :func:`write_pvd_series` is given a folder: ``<folder>/series.pvd``."""


def read_pvd(path: str | os.PathLike, array: str | None = None, mask_nonfinite: bool = False,
             indices: Sequence[int] | None = None) -> TimeSeries:
    """The ``.vti`` steps of a ``.pvd`` collection (or those at ``indices``) at their ``timestep`` values.

    A step that is not a ``.vti`` file, is missing or differs from the first (dims, spacing, origin, array) is
    one error naming the step and its file.
    """
    entries = pvd_entries(path)
    for i, (t, file) in enumerate(entries):
        if file.suffix.lower() != ".vti":
            raise ValueError(f"collection {str(path)!r}: time step {i} (t={t:g}) is {str(file)!r}; only image "
                             f"(.vti) steps can be read.")
    return read_file_series([str(f) for _, f in entries], lambda p: read_vti(p, array, mask_nonfinite),
                            [t for t, _ in entries], indices=indices)


def pvd_path(folder_or_pvd: str | os.PathLike) -> Path:
    """The ``.pvd`` file :func:`write_pvd_series` writes for ``folder_or_pvd`` (a ``.pvd`` path or a folder)."""
    path = Path(folder_or_pvd)
    if path.suffix.lower() == ".pvd":
        return path
    if path.is_dir():
        return path / f"{DEFAULT_SERIES_NAME}.pvd"
    raise ValueError(f"series output {str(path)!r} must be a .pvd file or an existing folder.")


def step_file_name(pvd: Path, index: int, count: int) -> str:
    """``<stem>_<index>.vti`` beside the ``.pvd``, the index zero-padded so the files sort in time order."""
    return f"{pvd.stem}_{index:0{max(4, len(str(count - 1)))}d}.vti"


def write_pvd_series(folder_or_pvd: str | os.PathLike,
                     steps: Iterable[tuple[float, vtkImageData | tuple[np.ndarray, ImageGeometry, str]]],
                     count: int | None = None) -> Path:
    """Write ``steps`` (``(time, image)`` pairs, an image a ``vtkImageData`` or ``(values (nz, ny, nx),
    geometry, array name)``) as one ``.vti`` per step and a ``.pvd`` collection listing them; returns the
    ``.pvd`` path.

    ``steps`` may be a generator: one step is in memory at a time. ``count`` (the number of steps, when the
    generator cannot say) sets the zero padding of the file names. Every file is written atomically (a
    temporary name, then renamed) with the permissions new files get under the umask; the ``.pvd`` comes
    last, so a reader never sees a collection naming a missing or partial step.
    """
    pvd = pvd_path(folder_or_pvd)
    if not (pvd.parent if str(pvd.parent) else Path(".")).is_dir():
        raise FileNotFoundError(f"output folder {str(pvd.parent)!r} does not exist.")
    if count is None and isinstance(steps, Sequence):
        count = len(steps)
    written: list[tuple[float, str]] = []
    for index, (t, image) in enumerate(steps):
        t = float(t)
        if not np.isfinite(t) or (written and not t > written[-1][0]):
            raise ValueError(f"time step {index} has time {t:g}; times must be finite and increasing.")
        if not isinstance(image, vtkImageData):
            values, geometry, name = image
            image = image_from_array(values, geometry, name)
        name = step_file_name(pvd, index, count or index + 1)
        write_vti(pvd.parent / name, image)
        written.append((t, name))
    if not written:
        raise ValueError("a .pvd collection needs at least one time step, got none.")
    lines = ['<?xml version="1.0"?>', '<VTKFile type="Collection" version="0.1" byte_order="LittleEndian">',
             "  <Collection>"]
    lines += [f'    <DataSet timestep="{t!r}" group="" part="0" file={quoteattr(name)}/>' for t, name in written]
    lines += ["  </Collection>", "</VTKFile>", ""]
    text = "\n".join(lines)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(pvd, write)
    return pvd
