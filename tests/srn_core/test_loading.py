"""srn_core.loading: one entry point for our model files and peers' folders, and the checks every load gets."""

from __future__ import annotations

import ast
import json
import math
import os
import select
import signal
import tempfile
from pathlib import Path

import pytest
import torch

from core_samples import small_model, write_model_file
from srn_core.loading import load_model, model_path
from srn_core.modelfile import ModelFileError

SRN_CORE = Path(__file__).resolve().parents[2] / "srn_core"


def outcome_in_child(function, seconds=30, as_nobody=False):
    """``function()``'s JSON result, computed in a forked child that is killed if it blocks for ``seconds``.

    A child, not a thread: opening a FIFO inside safetensors blocks while holding the GIL, so a blocked load
    would hang the whole test process. ``as_nobody`` drops root's privileges first (root ignores permissions).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then exit without running any of pytest's teardown
        try:
            if as_nobody and os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            os.write(write, json.dumps(function()).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], seconds)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the child blocked for {seconds} s")
        with os.fdopen(read) as f:
            read = None
            return json.loads(f.read())
    finally:
        if read is not None:
            os.close(read)
        os.waitpid(pid, 0)


def loading(path):
    """A function that loads ``path`` and returns ``[exception type, message]`` (or ``["loaded", ""]``)."""
    def load():
        try:
            load_model(path)
            return ["loaded", ""]
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            return [type(exc).__name__, str(exc)]
    return load


# ---- the import graph ------------------------------------------------------------------------------
def imported_srn_core_modules(module: str) -> set[str]:
    """The ``srn_core`` top-level modules that ``srn_core/<module>.py`` imports anywhere (also inside functions)."""
    tree = ast.parse((SRN_CORE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                names = [node.module] if node.module else [a.name for a in node.names]
            elif (node.module or "").startswith("srn_core."):
                names = [node.module[len("srn_core."):]]
            else:
                names = []
            found.update(n.split(".")[0] for n in names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("srn_core."))
    return found


def test_loading_modules_import_without_a_cycle():
    modules = ("devices", "modelfile", "model", "peers", "loading")
    graph = {m: imported_srn_core_modules(m) & set(modules) for m in modules}
    assert graph == {"devices": set(), "modelfile": set(), "model": {"modelfile"},
                     "peers": {"model", "modelfile"}, "loading": {"devices", "model", "modelfile", "peers"}}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph[start])

    assert [m for m in modules if reaches(m, m)] == []


# ---- dispatch ----------------------------------------------------------------------------------------
def test_a_file_inside_an_apmgsrn_folder_means_the_folder(tmp_path):
    folder = tmp_path / "peer"
    folder.mkdir()
    (folder / "options.json").write_text("{}")
    (folder / "model.ckpt.tar").write_bytes(b"")
    assert model_path(folder / "options.json") == folder
    assert model_path(folder / "model.ckpt.tar") == folder
    lonely = tmp_path / "model.ckpt.tar"  # without options.json beside it, just a file
    lonely.write_bytes(b"")
    assert model_path(lonely) == lonely
    with pytest.raises(FileNotFoundError, match=r"^model file '.*nowhere.srn' does not exist\.$"):
        model_path(tmp_path / "nowhere.srn")


def test_load_model_resolves_the_device(tmp_path):
    path = tmp_path / "m.srn"
    small_model().save(path)
    assert load_model(path, "auto").field.value_range.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert load_model(path, torch.device("cpu")).field.value_range.device.type == "cpu"


# ---- paths that are no regular file ------------------------------------------------------------
def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "model.srn"
    os.mkfifo(fifo)
    assert outcome_in_child(loading(fifo)) == ["ModelFileError",
                                               f"model file {str(fifo)!r} is a FIFO, not a regular file."]


def test_a_character_device_is_refused():
    with pytest.raises(ModelFileError, match=r"^model file '/dev/zero' is a character device, not a regular file\.$"):
        load_model("/dev/zero")


def test_an_unreadable_model_is_permission_denied_not_missing():
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        path = Path(d) / "m.srn"
        write_model_file(path)
        path.chmod(0)
        assert outcome_in_child(loading(path), as_nobody=True) == [
            "PermissionError", f"model file {str(path)!r} cannot be read: permission denied."]
        closed = Path(d) / "closed"
        closed.mkdir(mode=0o700)  # a folder nobody may enter: stat itself is refused
        inside = closed / "m.srn"
        write_model_file(inside)
        assert outcome_in_child(loading(inside), as_nobody=True) == [
            "PermissionError", f"model file {str(inside)!r} cannot be read: permission denied."]


# ---- what the file declares against what it holds ------------------------------------------------
def test_a_small_file_declaring_huge_grids_is_refused_without_allocating_them(tmp_path):
    path = tmp_path / "huge.srn"
    config = {**small_model().field.config_dict(), "n_features": 4, "grid_shape": [1000, 1000, 1000]}
    write_model_file(path, config=config)
    assert path.stat().st_size < 20_000
    # Building this field would need 64 GB; the shapes are compared on torch's meta device first.
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert str(info.value) == (f"model file {str(path)!r} declares field.feature_grids of shape "
                               f"[4, 4, 1000, 1000, 1000] but holds [4, 2, 5, 6, 7] (a damaged file; the declared "
                               f"tensor alone would need 64 GB).")


def test_missing_and_undeclared_tensors_are_named(tmp_path):
    path = tmp_path / "extra.srn"
    write_model_file(path, tensors={"field.secret": torch.zeros(3)})
    with pytest.raises(ModelFileError, match=r"does not match its config: it holds undeclared field\.secret\.$"):
        load_model(path)
    path = tmp_path / "fewer.srn"
    write_model_file(path, config={**small_model().field.config_dict(), "n_hidden_layers": 3})
    with pytest.raises(ModelFileError, match=r"does not match its config: it lacks field\.decoder\.6\.weight\.$"):
        load_model(path)


def test_a_model_that_cannot_fit_is_a_memory_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "m.srn"
    write_model_file(path)
    monkeypatch.setenv("SRN_MEMORY_LIMIT", "4kB")
    with pytest.raises(MemoryError) as info:
        load_model(path)
    # 2,144 float32 parameters and the 2-value range buffer.
    assert str(info.value) == (f"model file {str(path)!r} (apmgsrn, 2,144 parameters) needs 8.58 kB of memory but "
                               f"only 4 kB is available; ask for less.")
    monkeypatch.setenv("SRN_MEMORY_LIMIT", "9kB")
    assert load_model(path).num_parameters == 2144


# ---- values that would make every output NaN ----------------------------------------------------------
@pytest.mark.parametrize("lo, hi", [(math.nan, 1.0), (0.0, math.inf), (3.0, -1.0)])
def test_a_bad_value_range_is_refused(tmp_path, lo, hi):
    path = tmp_path / "m.srn"
    write_model_file(path, tensors={"field.value_range": torch.tensor([lo, hi])})
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert str(info.value) == (f"model file {str(path)!r} has value range [{lo:g}, {hi:g}]; a value range is two "
                               f"finite numbers min <= max (the file is damaged).")


def test_non_finite_weights_are_counted_and_named(tmp_path):
    grids = small_model().field.feature_grids.detach().clone()
    grids[0, 0, 0, 0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    path = tmp_path / "m.srn"
    write_model_file(path, tensors={"field.feature_grids": grids})
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert str(info.value) == (f"model file {str(path)!r} has 3 values that are not finite (NaN or Inf) in "
                               f"field.feature_grids; the file is damaged or its training diverged.")


def test_non_finite_weights_in_a_peer_checkpoint_are_refused_too(tmp_path):
    folder = tmp_path / "peer"
    folder.mkdir()
    (folder / "options.json").write_text(json.dumps({"model": "APMGSRN", "n_layers": 2, "nodes_per_layer": 16,
                                                     "data_min": 0.0, "data_max": 1.0, "full_shape": [4, 4, 4]}))
    grids = torch.zeros(1, 2, 3, 3, 3)
    grids[0, 1, 2, 2, 2] = math.nan
    # tiny-cuda-nn's flat decoder: [16, pad16(2)], [16, 16], [pad16(1), 16]
    state = {"encoder.transformation_matrices": torch.eye(4)[None], "encoder.feature_grids": grids,
             "decoder.params": torch.zeros(3 * 16 * 16)}
    torch.save({"state_dict": state}, folder / "model.ckpt.tar")
    with pytest.raises(ModelFileError) as info:
        load_model(folder)
    assert str(info.value) == (f"peer checkpoint {str(folder)!r} has 1 value that is not finite (NaN or Inf) in "
                               f"field.feature_grids; the file is damaged or its training diverged.")
