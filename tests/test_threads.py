"""CPU threads that follow the free cores (issue 32): ``train.threads: 0`` starts with the cores other
processes leave free and follows them during the run (two agreeing looks before a change); a fixed
``train.threads`` is left alone. The load is read from the kernel's counters: a spinning neighbour shows."""
import logging
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from sandbox.engine import runtime
from sandbox.engine.runtime import CpuLoad, ThreadGovernor, set_threads


class FakeLoad:
    """A CpuLoad whose ``others()`` plays back given values."""

    def __init__(self, cpus: int, values):
        self.cpus, self.values, self.last = set(range(cpus)), list(values), (0.0, time.monotonic(), 0.0)

    def others(self) -> float:
        return self.values.pop(0)


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("cpus,most,others,want", [
    (2, 2, 0.0, 2), (2, 2, 0.4, 2), (2, 2, 1.0, 1), (2, 2, 1.9, 1),  # round(2 - others), at least 1
    (4, 2, 1.0, 2), (4, 2, 3.0, 1), (8, 4, 5.2, 3),                  # never above the run's share `most`
])
def test_the_count_is_the_free_cores_rounded_within_one_and_the_share(cpus, most, others, want):
    assert ThreadGovernor(FakeLoad(cpus, []), most).wanted(others) == want


def test_a_change_needs_two_agreeing_looks_and_is_applied(keep_threads):
    gov = ThreadGovernor(FakeLoad(2, [1.0, 0.1, 1.0, 1.0, 0.0, 0.0]), most=2)
    gov.every = 0.0
    said = [gov.tick() for _ in range(6)]
    # 1.0 (wants 1: pending), 0.1 (wants 2 = current: pending cleared), 1.0 (pending), 1.0 (agreed: 2 -> 1),
    # 0.0 (wants 2: pending), 0.0 (agreed: 1 -> 2)
    assert [s is not None for s in said] == [False, False, False, True, False, True]
    assert "2 -> 1" in said[3] and "1.0 of this run's 2 cores" in said[3] and "1 -> 2" in said[5]
    assert gov.threads == 2 and torch.get_num_threads() == 2


def test_it_looks_only_every_so_often():
    gov = ThreadGovernor(FakeLoad(2, [1.0]), most=2)  # a second look would pop from an empty list
    gov.every = 3600.0
    assert [gov.tick() for _ in range(100)] == [None] * 100


def test_a_fixed_count_has_no_governor_and_zero_starts_from_the_free_cores(monkeypatch, keep_threads):
    acc = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    assert set_threads(acc, 1) == (1, None) and torch.get_num_threads() == 1
    monkeypatch.setattr(runtime, "my_cores", lambda: [0, 1])
    monkeypatch.setattr(CpuLoad, "open", classmethod(lambda cls: FakeLoad(2, [1.0])))
    threads, gov = set_threads(acc, 0)
    assert threads == 2 and gov is not None and gov.most == 2  # until the first look, after set-up
    assert gov.settle(window=0.0) == 1 and torch.get_num_threads() == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat (Linux)")
def test_a_spinning_neighbour_shows_as_a_busy_core():
    load = CpuLoad.open()
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 30\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.5)  # it is running
        load.others()
        time.sleep(1.0)
        busy = load.others()
    finally:
        spin.kill()
        spin.wait()
    # the neighbour keeps one core busy; anything else running on the machine only adds to it
    assert busy >= 0.7, busy
    assert busy <= len(load.cpus)


def test_a_run_logs_the_change_when_the_machine_gets_busy(tmp_path, monkeypatch, caplog, keep_threads):
    """The training loop asks the governor every step: a neighbour appearing mid-run takes a thread."""
    from sandbox import build_trainer, load_config

    monkeypatch.setattr(runtime, "my_cores", lambda: [0, 1])
    monkeypatch.setattr(CpuLoad, "open", classmethod(lambda cls: FakeLoad(2, [0.0] + [1.2] * 50)))
    monkeypatch.setattr(ThreadGovernor, "every", 0.0)  # the first look (settle, before the banner) sees 0.0
    cfg = load_config("configs/unet_dice.yaml", [f"out_dir={tmp_path}", "name=t", "data.size=16",
                                                  "data.num_train=16", "data.num_val=4", "data.batch_size=4",
                                                  "model.width=4", "model.depth=2", "train.epochs=1",
                                                  "track.wandb=disabled", "train.mixed_precision=no",
                                                  "train.num_images=0", "train.threads=0"])
    with caplog.at_level(logging.INFO, logger="sandbox"):
        trainer = build_trainer(cfg)
        trainer.fit()
    assert "sandbox: unet" not in caplog.text  # (the banner is printed, not logged)
    assert "torch threads 2 -> 1" in caplog.text and trainer.governor.threads == 1
