"""The ``device`` option and one process's :class:`tether.engine.dist.Dist`: auto resolves to the CPU without CUDA
(and to CUDA with it), an explicit cuda is refused in one line without CUDA, each rank's share of a batch covers it
once, and on one process the collectives are identities."""

from __future__ import annotations

import pytest
import torch

from tether.engine import dist as D
from tether.errors import ConfigError


def test_auto_is_cpu_without_cuda_and_cuda_with_it(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.setup("auto").device == torch.device("cpu")
    assert D.setup("cpu").device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert D.resolve_device("auto") == torch.device("cuda")
    assert D.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"device=cuda:2: this machine has 2 CUDA device"):
        D.resolve_device("cuda:2")
    assert D.resolve_device("cpu") == torch.device("cpu")  # explicit cpu wins over a visible GPU


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_refused_in_one_line_without_cuda(monkeypatch, name):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        D.setup(name)
    msg = str(err.value)
    assert msg.startswith(f"device={name}: CUDA is not available") and "\n" not in msg


@pytest.mark.parametrize("bad", ["gpu", "cuda0", "cpu:0", "", "tpu"])
def test_device_spelling_checked_by_the_configs(bad):
    from pydantic import ValidationError

    from tether.config.ppo import PPOConfig
    from tether.config.rm import RMConfig
    from tether.config.sft import SFTConfig

    for cls, extra in ((SFTConfig, {"train_file": "x.jsonl"}), (RMConfig, {"train_file": "x.jsonl"}),
                       (PPOConfig, {})):
        with pytest.raises(ValidationError, match="must be auto, cpu, cuda or cuda:N"):
            cls(device=bad, **extra)
        assert cls(device=" cuda:3 ", **extra).device == "cuda:3"  # spelling only: the GPU is checked at the start
    with pytest.raises(ConfigError, match="device=gpu: must be"):
        D.setup("gpu")


@pytest.mark.parametrize("n,world", [(7, 2), (2, 3), (0, 2), (9, 4), (5, 1)])
def test_shares_cover_each_row_once_in_order(n, world):
    rows = list(range(100, 100 + n))
    shares = [D.Dist(torch.device("cpu"), rank=r, world_size=world).share(rows) for r in range(world)]
    assert [x for s in shares for x in s] == rows
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_collectives_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = D.setup("cpu")
    assert (d.rank, d.world_size, d.is_main, d.distributed, d.accelerator) == (0, 1, True, False, None)
    assert d.sum([1.5, 2]) == [1.5, 2.0]
    assert d.any(True) and not d.any(False)
    assert d.gather({"a": 1}) == [{"a": 1}] and d.broadcast(3) == 3
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    d.sum_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    d.barrier()


def test_an_explicit_gpu_index_is_refused_under_a_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="each one takes its own GPU"):
        D.setup("cuda:1")


def test_a_later_stage_asking_for_another_device_kind_is_refused(monkeypatch):
    """Under a launcher the process group is built once, by the first stage (here: on a GPU); a later stage that
    asks for the CPU gets one line instead of silently running on the GPU (and the other way round)."""
    class Acc:
        device, process_index, num_processes = "cuda:0", 0, 2

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(D, "_ACCELERATOR", Acc())
    with pytest.raises(ConfigError, match="already runs on cuda"):
        D.setup("cpu")
    Acc.device = "cpu"
    monkeypatch.setattr(D.torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="already runs on cpu"):
        D.setup("cuda")
