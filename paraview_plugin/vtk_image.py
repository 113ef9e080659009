"""Conversions between ``vtkImageData`` and the core's :class:`~srn_core.data.Volume`, the arrays the algorithms
read from their inputs and attach to their outputs, and VTI files.

Works with any VTK >= 9.2 (Debian's ParaView 5.11 and the PyPI wheel). Index order is VTK's (x fastest),
so a point array reshapes directly to ``(nz, ny, nx)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkStringArray
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkImageData

from srn_core.data import Volume
from srn_core.geometry import ImageGeometry
from srn_core.modelfile import atomic_write


def image_geometry(image: vtkImageData) -> ImageGeometry:
    """The geometry of ``image``'s points (its extent's own origin: the extent's first point)."""
    e = image.GetExtent()
    spacing = image.GetSpacing()
    origin = tuple(image.GetOrigin()[a] + e[2 * a] * spacing[a] for a in range(3))
    return ImageGeometry((e[1] - e[0] + 1, e[3] - e[2] + 1, e[5] - e[4] + 1), origin, spacing)


def values_geometry(image: vtkImageData, association: str) -> ImageGeometry:
    """Where ``image``'s values of ``association`` sit: its points, or (``"cell"``) its cell centres, one fewer
    per axis and half a spacing in (a flat axis keeps its single cell on the points' plane)."""
    g = image_geometry(image)
    if association == "point":
        return g
    dims = tuple(max(1, d - 1) for d in g.dims)
    origin = tuple(g.origin[a] + (0.5 * g.spacing[a] if g.dims[a] > 1 else 0.0) for a in range(3))
    return ImageGeometry(dims, origin, g.spacing)


def array_names(image: vtkImageData) -> dict[str, list[str]]:
    """Names of the single-component arrays of ``image``, by association (``"point"``, ``"cell"``)."""
    out = {}
    for assoc, data in (("point", image.GetPointData()), ("cell", image.GetCellData())):
        out[assoc] = [data.GetArrayName(i) for i in range(data.GetNumberOfArrays())
                      if data.GetArray(i) is not None and data.GetArray(i).GetNumberOfComponents() == 1]
    return out


def volume_from_image(image: vtkImageData, array: str | None = None, mask_nonfinite: bool = False,
                      association: str | None = None, mask_setting: str | None = None) -> Volume:
    """A :class:`Volume` from a point or cell array of ``image``.

    ``array`` defaults to the active point scalars, else the only single-component array. Cell data become a
    volume on the cell centres (dims one less per axis, origin shifted by half a spacing). ``association``
    (``"point"`` or ``"cell"``) picks where to look when a point and a cell array share the name.
    ``mask_setting`` names the setting that masks NaN/Inf values in the error about them (the core's own
    message names the command line's ``--mask-nonfinite``, which means nothing in ParaView).
    """
    names = array_names(image)
    if association is not None:
        if association not in ("point", "cell"):
            raise ValueError(f"association must be 'point' or 'cell', got {association!r}.")
        other = "cell" if association == "point" else "point"
        names = {association: names[association], other: [] if array is not None else names[other]}
    if array is None:
        scalars = image.GetPointData().GetScalars()
        if scalars is not None and scalars.GetNumberOfComponents() == 1 and scalars.GetName():
            array = scalars.GetName()
        else:
            every = names["point"] + names["cell"]
            if len(every) != 1:
                raise ValueError(f"choose an array: the image has point arrays {names['point']} and cell arrays "
                                 f"{names['cell']}.")
            array = every[0]
    if array in names["point"]:
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetArray(array))
        geometry = values_geometry(image, "point")
    elif array in names["cell"]:
        values = numpy_support.vtk_to_numpy(image.GetCellData().GetArray(array))
        geometry = values_geometry(image, "cell")
    else:
        raise ValueError(f"array {array!r} is not a single-component point or cell array of the image; it has "
                         f"point arrays {names['point']} and cell arrays {names['cell']}.")
    if mask_setting is not None and not mask_nonfinite:
        bad = values.size - int(np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ValueError(f"array {array!r} holds {bad} non-finite values (NaN/Inf); turn on {mask_setting} to "
                             f"exclude them from training and metrics.")
    return Volume(values.reshape(geometry.shape), geometry, array, mask_nonfinite=mask_nonfinite)


# ---- the arrays an algorithm reads and writes -----------------------------------------------------------
ASSOCIATIONS = {vtkDataObject.FIELD_ASSOCIATION_POINTS: "point", vtkDataObject.FIELD_ASSOCIATION_CELLS: "cell"}


def selected_array(algorithm, index: int) -> tuple[str | None, str | None]:
    """Name and association (``"point"``/``"cell"``) set with ``SetInputArrayToProcess(index, ...)``, if any."""
    info = algorithm.GetInputArrayInformation(index)
    if info is None or not info.Has(vtkDataObject.FIELD_NAME()):
        return None, None
    name = info.Get(vtkDataObject.FIELD_NAME()) or None
    assoc = info.Get(vtkDataObject.FIELD_ASSOCIATION()) if info.Has(vtkDataObject.FIELD_ASSOCIATION()) else None
    return name, ASSOCIATIONS.get(assoc)


def selected_volume(algorithm, image: vtkImageData, mask_nonfinite: bool,
                    mask_setting: str | None = None) -> tuple[Volume, str]:
    """The volume of the array picked with ``SetInputArrayToProcess(0, ...)`` and where it lives (``"point"`` or
    ``"cell"``); see :func:`volume_from_image` for the defaults and ``mask_setting``."""
    name, association = selected_array(algorithm, 0)
    volume = volume_from_image(image, name, mask_nonfinite, association, mask_setting)
    return volume, association or ("point" if volume.name in array_names(image)["point"] else "cell")


def float_array(values, name: str):
    """``values`` (any shape, x fastest) as a named float32 VTK array (a copy: VTK owns its memory)."""
    arr = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), deep=1)
    arr.SetName(name)
    return arr


def attach_array(output: vtkImageData, values, name: str, association: str, active: bool = True) -> None:
    """Add float32 ``values`` as a point or cell array of ``output`` (its active scalars when ``active``)."""
    data = output.GetPointData() if association == "point" else output.GetCellData()
    arr = float_array(values, name)
    if active:
        data.SetScalars(arr)
    else:
        data.AddArray(arr)


def add_field_values(data: vtkImageData, values: dict) -> None:
    """Attach one-tuple field-data arrays (numbers as doubles, strings as a string array)."""
    for name, value in values.items():
        arr = vtkStringArray() if isinstance(value, str) else vtkDoubleArray()
        arr.SetName(name)
        arr.InsertNextValue(value if isinstance(value, str) else float(value))
        data.GetFieldData().AddArray(arr)


def image_from_array(values: np.ndarray, geometry: ImageGeometry, name: str,
                     extent=None, image: vtkImageData | None = None) -> vtkImageData:
    """A ``vtkImageData`` (or fill ``image``) with ``values`` ``(nz, ny, nx)`` as its point scalars.

    ``extent`` places the values in a larger whole image (a piece); the origin stays the whole image's.
    """
    image = image if image is not None else vtkImageData()
    e = tuple(extent) if extent is not None else geometry.whole_extent
    image.SetExtent(*e)
    image.SetOrigin(*geometry.origin)
    image.SetSpacing(*geometry.spacing)
    attach_array(image, values, name, "point")
    return image


def read_vti(path: str | os.PathLike, array: str | None = None, mask_nonfinite: bool = False) -> Volume:
    """A volume from any VTK XML image file (``.vti``; inline, appended, compressed; point or cell data)."""
    from vtkmodules.vtkIOXML import vtkXMLImageDataReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist.")
    reader = vtkXMLImageDataReader()
    reader.SetFileName(str(path))
    if not reader.CanReadFile(str(path)):
        raise ValueError(f"input file {str(path)!r} is not a VTK XML image (.vti) file.")
    reader.Update()
    image = reader.GetOutput()
    if image is None or image.GetNumberOfPoints() == 0:
        raise ValueError(f"input file {str(path)!r} holds no image points (truncated or corrupt?).")
    return volume_from_image(image, array, mask_nonfinite)


def write_vti(path: str | os.PathLike, image: vtkImageData, compress: bool = True) -> None:
    """Write ``image`` as a ``.vti`` file atomically (appended raw binary, zlib compressed by default)."""
    from vtkmodules.vtkIOXML import vtkXMLImageDataWriter

    def write(tmp):
        writer = vtkXMLImageDataWriter()
        writer.SetFileName(tmp)
        writer.SetInputData(image)
        writer.SetDataModeToAppended()
        writer.EncodeAppendedDataOff()
        if not compress:
            writer.SetCompressorTypeToNone()
        if writer.Write() != 1:
            raise OSError(f"VTK could not write {str(path)!r}.")

    atomic_write(path, write)
