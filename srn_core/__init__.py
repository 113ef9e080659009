"""srn_core: scene representation networks in pure PyTorch + NumPy (never vtk or paraview).

geometry   index order and coordinate conventions (the only owner)
fields     the models behind one interface: APMGSRN, fV-SRN, NGP hash grid, SIREN, ensembles
training   fitting a field to a volume (checkpoints, resume, the APMGSRN schedule)
evaluate   chunked evaluation under inference_mode; resampling any region at any resolution
model      NeuralVolume: a field + the geometry of its data + provenance; load/save
modelfile  the safetensors model file (no pickle, atomic writes);  peers: APMGSRN checkpoints
data       Volume and readers (NIfTI, NetCDF, npy, raw);  metrics: PSNR, max error, SSIM
render     ray marching a field with VTK's conventions
"""

import os as _os

# Threads waiting for work sleep instead of spinning. libgomp (torch's OpenMP) reads this once, when torch loads,
# so it is set here, before any module of this package imports torch; a value the user set wins. With the
# default spinning, one other busy process made evaluation 20x slower on a 2-core machine (docs/performance.md).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
