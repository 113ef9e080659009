"""The ParaView plugin in one file: load it with ``LoadPlugin``, the Plugin Manager or ``PV_PLUGIN_PATH``.

It registers every proxy described in the repository's ``xml/`` folder ("Neural Volume Source", "Train
Neural Volume", "Neural Volume Error", in the "Neural Volume" menu). The proxies point at plain VTK Python
classes in ``paraview_plugin``, so this file only makes that package importable (a plugin's own folder is
not on ``sys.path``) and hands the XML to ParaView, which collects objects that carry ``_pvsm_proxy_xml``.
On ParaView 5.11 with Python 3.11 ``paraview_plugin/pvfix`` must be on ``PYTHONPATH`` (see docs/paraview.md).
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

paraview_plugin_name = "NeuralVolume"
paraview_plugin_version = "0.1.0"


class _ProxyXML:
    """Carries one ServerManager XML document the way ParaView's Python plugin loader expects."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self._pvsm_proxy_xml = f.read()


_XML_DIR = os.path.join(_ROOT, "xml")
for _name in sorted(os.listdir(_XML_DIR)):
    if _name.endswith(".xml"):
        globals()["_proxy_" + _name[:-4]] = _ProxyXML(os.path.join(_XML_DIR, _name))
