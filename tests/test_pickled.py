"""Reading pickled checkpoints: tensors come back; nothing the file names is imported or run."""

import os
import pathlib
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


class Callback:
    """Stands for a library object stored in a Lightning checkpoint (e.g. ModelCheckpoint's state)."""

    def __init__(self):
        self.best = pathlib.PurePosixPath("/somewhere/best.ckpt")


def test_tensors_of_a_lightning_checkpoint_load_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    weights = OrderedDict(
        [("model.diffusion_model.out.2.weight", torch.randn(4, 8, 3, 3)), ("scale_factor", torch.tensor(0.18215))]
    )
    path = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": weights,
            "global_step": 470000,
            "callbacks": {"ModelCheckpoint": Callback()},
            "payload": Payload(marker),
            "dtype": torch.float16,
        },
        path,
    )
    state = read_checkpoint(path)
    assert not marker.exists()
    assert state.keys() == weights.keys()
    for key, tensor in weights.items():
        assert torch.equal(state[key], tensor)
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


def test_the_legacy_format_is_read_through_the_same_restrictions(tmp_path):
    marker = tmp_path / "ran"
    weights = {"w": torch.arange(6.0).view(2, 3)}
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": weights, "payload": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(path)["w"], weights["w"]) and not marker.exists()
