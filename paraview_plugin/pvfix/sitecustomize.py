"""Compatibility shim for ParaView 5.11 on Python 3.11 (put this folder on PYTHONPATH for pvpython/pvbatch).

ParaView 5.11.0-5.11.2 import ``inspect.getargspec`` when loading Python plugins; Python 3.11 removed it
(fixed in ParaView 5.12). Python imports ``sitecustomize`` at start-up in pvpython, pvbatch (every MPI rank)
and the GUI, so restoring the name here makes ``.py`` plugins load everywhere. Harmless on newer versions.
"""

import inspect as _inspect

if not hasattr(_inspect, "getargspec"):
    _inspect.getargspec = _inspect.getfullargspec
