"""The CLI keeps freed memory in the process: reallocating a step's tensors stops page-faulting."""

import platform
import subprocess
import sys

import pytest

from tasks.engine.allocator import keep_freed_memory

STEPS = """
import resource, sys, torch
from torch import nn
from tasks.engine.allocator import keep_freed_memory
torch.manual_seed(0)
torch.set_num_threads(1)
was_set = keep_freed_memory() if sys.argv[1] == "keep" else False
net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 32, 3, padding=1),
                    nn.GroupNorm(8, 32), nn.SiLU(), nn.Conv2d(32, 3, 3, padding=1))
x = torch.randn(8, 3, 64, 64)
def step():
    net.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(was_set, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode):
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True).stdout
    was_set, count = out.split()
    return was_set == "True", int(count)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keeping_freed_memory_stops_the_page_faults_of_reallocated_tensors():
    _, default = faults("default")
    was_set, kept = faults("keep")
    assert was_set
    # Ten training steps of a small conv net at 64 px, batch 8 (activations of 2-4 MiB each):
    # glibc's defaults gave about 49,000 faults here, zero-filling fresh pages every step;
    # kept memory is reused (about 1,500, the first touches of a new high-water mark).
    assert default > 10_000
    assert kept < default / 10


@pytest.mark.parametrize(
    "name, value",
    [("MALLOC_TRIM_THRESHOLD_", "1000000"), ("LDM_KEEP_FREED_MEMORY", "0"), ("LDM_KEEP_FREED_MEMORY", "Off")],
)
def test_the_users_own_thresholds_or_opt_out_leave_the_allocator_alone(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert keep_freed_memory() is False


def test_an_opt_out_value_that_is_neither_yes_nor_no_is_one_clear_error_before_anything_runs(
    cli, ae_spec, tmp_path, monkeypatch
):
    monkeypatch.setenv("LDM_KEEP_FREED_MEMORY", "sometimes")
    code, out, err = cli(ae_spec)
    assert code == 2
    assert err.strip() == (
        "error: LDM_KEEP_FREED_MEMORY='sometimes' is not understood; set it to 1 (keep freed "
        "memory, the default) or 0 (leave the C library's defaults)"
    )
    assert not (tmp_path / "runs").exists()
