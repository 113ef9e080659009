"""The layers: the core never imports VTK or ParaView."""

import subprocess
import sys




def test_srn_core_never_imports_vtk_or_paraview():
    code = ("import sys, srn_core.model, srn_core.training, srn_core.data, srn_core.evaluate, srn_core.metrics, "
            "srn_core.peers\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('vtk', 'vtkmodules', 'paraview')]\n"
            "assert not bad, bad\nprint('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr
