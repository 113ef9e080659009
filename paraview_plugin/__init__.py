"""VTK algorithms for neural volumes (plain ``VTKPythonAlgorithmBase`` classes; no ``paraview`` import).

``from paraview_plugin import NeuralVolumeSource, TrainNeuralVolume, NeuralVolumeError`` works in any VTK
script; each class is imported only when first asked for, so importing the package stays light.
"""

_CLASSES = {
    "NeuralVolumeSource": "neural_volume_source",
    "TrainNeuralVolume": "train_neural_volume",
    "NeuralVolumeError": "neural_volume_error",
}


def __getattr__(name):
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_CLASSES)
