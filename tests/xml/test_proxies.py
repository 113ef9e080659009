"""The ServerManager XML files against the VTK classes they describe (no ParaView needed).

Every proxy: label = name with spaces, the "Neural Volume" menu, documentation on the proxy and on every
property, setters that exist on the class, defaults equal to the class's own, advanced settings hidden.
"""

from __future__ import annotations

import importlib
import re
import xml.etree.ElementTree as ET

import pytest

import paraview_env

PROXIES = {"NeuralVolumeSource": "sources", "TrainNeuralVolume": "filters", "NeuralVolumeError": "filters"}
ADVANCED = {"Device", "ChunkSize", "BatchSize", "LearningRate", "Seed", "MaskNonFinite", "ClampToDataRange"}


def proxy_element(name):
    root = ET.parse(paraview_env.XML_DIR / f"{name}.xml").getroot()
    assert root.tag == "ServerManagerConfiguration"
    group = root.find("ProxyGroup")
    assert group.get("name") == PROXIES[name]
    proxy = group.find("SourceProxy")
    assert proxy.get("name") == name
    return proxy


def vtk_class(proxy):
    module, cls = proxy.get("class").rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_proxy_identity_menu_and_documentation(name):
    proxy = proxy_element(name)
    assert proxy.get("label") == re.sub(r"(?<!^)([A-Z])", r" \1", name)  # paraview.simple's constructor name
    assert proxy.get("si_class") == "vtkSIPythonSourceProxy"
    module = re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()
    assert proxy.get("class") == f"paraview_plugin.{module}.{name}"
    assert proxy.find("Hints/ShowInMenu").get("category") == "Neural Volume"
    doc = proxy.find("Documentation")
    assert doc.get("short_help") and doc.get("long_help") and len(doc.text.split()) > 30


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_every_property_is_documented_and_maps_to_a_setter(name):
    proxy = proxy_element(name)
    algorithm = vtk_class(proxy)()
    properties = [p for p in proxy if p.tag.endswith("Property")]
    assert properties
    for prop in properties:
        doc = prop.find("Documentation")
        assert doc is not None and doc.text and len(doc.text.split()) >= 5, prop.get("name")
        command = prop.get("command")
        assert hasattr(algorithm, command), f"{name}.{command}"
        if prop.get("name") in ADVANCED:
            assert prop.get("panel_visibility") == "advanced", prop.get("name")


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_xml_defaults_equal_the_class_defaults(name):
    proxy = proxy_element(name)
    algorithm = vtk_class(proxy)()
    config = algorithm.config
    snake = {f: f for f in vars(config)}
    for prop in proxy:
        default = prop.get("default_values")
        if default is None or prop.tag == "InputProperty" or prop.get("command") == "SetInputArrayToProcess":
            continue
        field = re.sub(r"(?<!^)([A-Z])", r"_\1", prop.get("name")).lower()
        if prop.get("name") in ("SamplingOrigin", "SamplingSize"):
            value = getattr(algorithm, "Get" + prop.get("name"))()
            assert tuple(float(v) for v in default.split()) == tuple(value)
            continue
        assert field in snake, f"{name}.{prop.get('name')} has no config entry {field!r}"
        value = getattr(config, field)
        parsed = default.split()
        if isinstance(value, bool):
            assert bool(int(parsed[0])) == value, field
        elif isinstance(value, (int, float)):
            assert float(parsed[0]) == value, field
        elif isinstance(value, str):
            assert default == value, field
        else:
            assert tuple(float(v) for v in parsed) == tuple(float(v) for v in value), field


def test_model_file_properties_use_a_file_chooser():
    for name, prop_name in (("NeuralVolumeSource", "FileName"), ("TrainNeuralVolume", "ModelFileName"),
                            ("NeuralVolumeError", "ModelFileName")):
        prop = next(p for p in proxy_element(name) if p.get("name") == prop_name)
        assert prop.find("FileListDomain") is not None
        assert "srn" in prop.find("Hints/FileChooser").get("extensions").split()


def test_sampling_box_is_an_interactive_box_widget():
    proxy = proxy_element("NeuralVolumeSource")
    box = next(g for g in proxy.findall("PropertyGroup") if g.get("panel_widget") == "InteractiveBox")
    functions = {p.get("function"): p.get("name") for p in box.findall("Property")}
    assert functions == {"Position": "SamplingOrigin", "Scale": "SamplingSize"}
    decorator = box.find("Hints/PropertyWidgetDecorator")
    assert decorator.get("property") == "UseModelBounds" and decorator.get("value") == "0"


def test_device_and_chunk_size_are_the_same_property_in_every_proxy():
    """The three algorithms share these settings (``_algorithm.EvaluationSettings``): one definition, written
    out in each XML (ParaView 5.11 has no way to share a property between proxies of separate XML files)."""
    for prop_name in ("Device", "ChunkSize"):
        texts = set()
        for name in PROXIES:
            proxy = proxy_element(name)
            prop = next(p for p in proxy if p.get("name") == prop_name)
            texts.add(" ".join(ET.tostring(prop, encoding="unicode").split()))
            group = next(g for g in proxy.findall("PropertyGroup") if g.get("label") == "Evaluation")
            assert group.get("panel_visibility") == "advanced"
            assert prop_name in [p.get("name") for p in group.findall("Property")], name
        assert len(texts) == 1, texts
