"""Reading pickled checkpoints: tensors come back from Lightning-style files in both PyTorch
formats; a file that names anything else is refused and nothing it names runs."""

import os
import sys
import types
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from tasks.importing.pickled import Inert, read_checkpoint


class Payload:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def lightning(monkeypatch):
    """A stand-in for pytorch_lightning's ModelCheckpoint, importable under its real name while
    a checkpoint is written (as Lightning 1.x keyed callback states by their class)."""
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.dirpath = "/logs/checkpoints"

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return ModelCheckpoint


WEIGHTS = OrderedDict(
    [("model.diffusion_model.out.2.weight", torch.randn(4, 8, 3, 3)), ("scale_factor", torch.tensor(0.18215))]
)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_the_tensors_of_a_lightning_checkpoint_load(tmp_path, lightning, zipped):
    path = tmp_path / "model.ckpt"
    callbacks = {lightning: {"best_model_score": torch.tensor(0.1), "best_model_path": "/logs/last.ckpt"}}
    checkpoint = {
        "state_dict": WEIGHTS,
        "global_step": 470000,
        "epoch": 3,
        "pytorch-lightning_version": "1.4.2",
        "callbacks": callbacks,
        "instance": lightning(),
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zipped)
    state = read_checkpoint(path)
    assert state.keys() == WEIGHTS.keys()
    assert all(torch.equal(state[key], tensor) for key, tensor in WEIGHTS.items())


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_planted_payload_is_refused_and_writes_nothing(tmp_path, zipped):
    marker = tmp_path / "ran"
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": WEIGHTS, "payload": Payload(marker)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(ValueError, match=r"model.ckpt holds an object of (posix|os)\.system, which loading would"):
        read_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: a plain load runs the payload (a harmless touch)
    assert marker.exists()


def test_a_plain_state_dict_and_safetensors(tmp_path):
    weights = {"encoder.conv_in.weight": torch.randn(8, 3, 3, 3), "encoder.conv_in.bias": torch.randn(8)}
    torch.save(weights, tmp_path / "w.pth")
    save_file(weights, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        state = read_checkpoint(tmp_path / name)
        assert all(torch.equal(state[key], weights[key]) for key in weights)


def test_inert_stands_for_anything():
    thing = Inert("a", b=1)
    thing.__setstate__({"x": 1})
    assert isinstance(thing(), Inert)


def test_files_without_tensors_are_refused(tmp_path):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.ckpt is not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "notes.ckpt")
    torch.save({"global_step": 3}, tmp_path / "empty.ckpt")
    with pytest.raises(ValueError, match="empty.ckpt holds no tensors under 'state_dict' or at its top level"):
        read_checkpoint(tmp_path / "empty.ckpt")
