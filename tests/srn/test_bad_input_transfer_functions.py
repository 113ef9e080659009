"""Bad input catalogue: transfer-function files given to ``srn render --tf``.

Every case runs the real command in a subprocess and must end with exit status 1, exactly one line on standard
error (``srn render: error: ...``) that names the file and, where there is one, the offending key, no traceback,
and no PNG left behind.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

GOOD_RGB = [0, 0, 0, 1, 1, 1, 0, 0]
GOOD_POINTS = [0, 0, 0.5, 0, 1, 1, 0.5, 0]


def preset(**fields):
    """A valid preset with ``fields`` replaced (the value ``...`` removes the key)."""
    base = {"Name": "bad", "ColorSpace": "RGB", "RGBPoints": GOOD_RGB, "Points": GOOD_POINTS}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def json_text(value) -> str:
    import json
    return json.dumps(value)


# (case id, file contents (str or bytes), the key the error must name or None, one more phrase it must contain)
CASES = [
    ("rgbpoints-object", json_text(preset(RGBPoints={"x": 0, "r": 1})), "RGBPoints", "JSON object"),
    ("rgbpoints-string", json_text(preset(RGBPoints="0 0 0 1 1 1 0 0")), "RGBPoints", "JSON string"),
    ("rgbpoints-number", json_text(preset(RGBPoints=3)), "RGBPoints", "JSON number"),
    ("rgbpoints-null", json_text(preset(RGBPoints=None)), "RGBPoints", "JSON null"),
    ("rgbpoints-wrong-length", json_text(preset(RGBPoints=[0, 0, 0, 1, 1, 1, 0])), "RGBPoints", "7 numbers"),
    ("rgbpoints-empty", json_text(preset(RGBPoints=[])), "RGBPoints", "0 numbers"),
    ("rgbpoints-non-number", json_text(preset(RGBPoints=[0, 0, "a", 1, 1, 1, 0, 0])), "RGBPoints", "position 2"),
    ("rgbpoints-boolean", json_text(preset(RGBPoints=[0, 0, 0, True, 1, 1, 0, 0])), "RGBPoints", "position 3"),
    ("rgbpoints-nested", json_text(preset(RGBPoints=[[0, 0, 0, 1], [1, 1, 0, 0]])), "RGBPoints", "position 0"),
    ("rgbpoints-nan", '{"RGBPoints": [0, 0, 0, NaN, 1, 1, 0, 0]}', "RGBPoints", "finite"),
    ("rgbpoints-colour-above-one", json_text(preset(RGBPoints=[0, 0, 0, 2, 1, 1, 0, 0])), "RGBPoints", "[0, 1]"),
    ("rgbpoints-decreasing", json_text(preset(RGBPoints=[1, 0, 0, 1, 0, 1, 0, 0])), "RGBPoints", "non-decreasing"),
    ("rgbpoints-missing", json_text(preset(RGBPoints=...)), "RGBPoints", "needs RGBPoints"),
    ("points-object", json_text(preset(Points={"x": 0})), "Points", "JSON object"),
    ("points-string", json_text(preset(Points="none")), "Points", "JSON string"),
    ("points-wrong-length", json_text(preset(Points=[0, 0, 0.5, 0, 1, 1])), "Points", "6 numbers"),
    ("points-non-number", json_text(preset(Points=[0, 0, 0.5, 0, 1, {"a": 1}, 0.5, 0])), "Points", "position 5"),
    ("points-alpha-above-one", json_text(preset(Points=[0, 0, 0.5, 0, 1, 3, 0.5, 0])), "Points", "[0, 1]"),
    ("points-midpoint-zero", json_text(preset(Points=[0, 0, 0, 0, 1, 1, 0.5, 0])), "Points", "midpoint"),
    ("colorspace-number", json_text(preset(ColorSpace=5)), "ColorSpace", "RGB, Lab"),
    ("colorspace-unknown", json_text(preset(ColorSpace="CMYK")), "ColorSpace", "'CMYK'"),
    ("top-level-number", "42", None, "preset object"),
    ("top-level-list-of-strings", json_text(["Viridis"]), None, "preset object"),
    ("empty-array", "[]", None, "holds no preset"),
    ("not-json", "RGBPoints = 0 0 0 1", None, "not valid JSON"),
    ("empty-file", "", None, "not valid JSON"),
    ("not-utf8", b"\xff\xfe\x00{", None, "UTF-8"),
    ("nested-too-deep", "[" * 100_000 + "]" * 100_000, None, "nested"),
]


@pytest.mark.parametrize("case, contents, key, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_transfer_function_file_is_one_clear_error(trained_model, tmp_path, case, contents, key, phrase):
    model, _ = trained_model
    tf = tmp_path / f"{case}.json"
    if isinstance(contents, bytes):
        tf.write_bytes(contents)
    else:
        tf.write_text(contents)
    out = tmp_path / "image.png"
    proc = subprocess.run([sys.executable, "-m", "srn.cli", "render", str(model), "-o", str(out), "--tf", str(tf),
                           "--size", "8", "8"], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("srn render: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(tf) in lines[0]
    if key is not None:
        assert key in lines[0]
    assert phrase in lines[0]
    assert not out.exists() and list(tmp_path.glob("*.png")) == []


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_a_transfer_function_path_that_is_no_file_is_named(trained_model, tmp_path, what):
    model, _ = trained_model
    tf = tmp_path / "tf.json"
    if what == "folder":
        tf.mkdir()
    proc = subprocess.run([sys.executable, "-m", "srn.cli", "render", str(model), "-o", str(tmp_path / "x.png"),
                           "--tf", str(tf), "--size", "8", "8"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"srn render: error: transfer function file {str(tf)!r} "
                                        + ("does not exist." if what == "missing" else "is not a file.")]
