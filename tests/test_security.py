"""Nothing a file smuggles in runs: weights are read as safetensors only, a pickle in their
place is refused without running, and no code path can unpickle."""

import json
import os
import pickle
import re

import torch

from tests.conftest import ROOT
from tests.test_frozen_text_encoder import write_bert
from tests.test_ldm import LDM


class Payload:
    """Unpickling this makes a folder: the proof that a file's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def malicious(path, bait):
    """A torch.save file (a zip holding a pickle) whose unpickling makes a folder in ``bait``."""
    torch.save({"model/first_stage/w": torch.zeros(1), "trap": Payload(bait / "payload-ran")}, path)
    assert pickle.loads(pickle.dumps(Payload(bait / "check"))) is None and (bait / "check").is_dir(), (
        "the payload works"
    )
    (bait / "check").rmdir()
    return path


def test_a_pickle_posing_as_weights_is_refused_and_its_payload_never_runs(cli, ae_spec, tmp_path):
    bait = tmp_path / "bait"
    bait.mkdir()
    assert cli(ae_spec)[0] == 0
    checkpoints = tmp_path / "runs" / "ae" / "checkpoints"
    malicious(checkpoints / (checkpoints / "latest").read_text(), bait)  # a trained run's checkpoint swapped

    def refused(code, err):
        return code == 2 and "safetensors" in err and not any(bait.iterdir())

    (tmp_path / "ldm.json").write_text(json.dumps({**LDM, "first_stage": {"run": "ae"}}))
    code, _, err = cli(tmp_path / "ldm.json")
    assert refused(code, err), err
    code, _, err = cli(ae_spec, "--set", "name=again", "--set", 'train.init_from={"run": "ae"}')
    assert refused(code, err), err
    lpips = malicious(tmp_path / "lpips.pt", bait)
    code, _, err = cli(
        ae_spec, "--set", "name=lpips", "--set", f'loss.perceptual={{"kind": "lpips", "weights_file": "{lpips}"}}'
    )
    assert refused(code, err), err
    bert = write_bert(tmp_path / "bert")
    malicious(bert / "model.safetensors", bait)
    from plugins.frozen_text_encoder import FrozenTextEncoder

    try:
        FrozenTextEncoder.Params(path=bert, max_length=8)
    except ValueError as exc:
        assert "as safetensors" in str(exc)
    else:
        raise AssertionError("a pickle was accepted as a BERT's weights")
    assert not any(bait.iterdir()), "no payload ran"


UNPICKLERS = re.compile(
    r"\b(torch\.load|torch\.jit\.load|torch\.export\.load|pickle\.loads?|cloudpickle|dill|"
    r"allow_pickle\s*=\s*True|weights_only\s*=\s*False)\b"
)


# The one loader of pickles: checkpoints made elsewhere, through torch's weights-only unpickler
# with inert stand-ins for known Lightning entries (tests/test_pickled.py: a planted payload is refused).
RESTRICTED = "tasks/importing/pickled.py"


def test_no_code_path_can_unpickle():
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for folder in ("core", "plugins", "tasks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if UNPICKLERS.search(line) and not line.lstrip().startswith(("#", '"', "'", "``"))
    ]
    assert found == [f"{RESTRICTED}:{n}: {line.strip()}" for n, line in _restricted_loads()]


def _restricted_loads():
    lines = (ROOT / RESTRICTED).read_text().splitlines()
    code = [(n, line) for n, line in enumerate(lines, 1) if not line.lstrip().startswith(("#", '"', "'", "``"))]
    loads = [(n, line) for n, line in code if UNPICKLERS.search(line)]
    assert loads and all("weights_only=True" in line for _, line in loads)
    return loads
