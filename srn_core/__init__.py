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
