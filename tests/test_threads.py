"""Thread count and OpenMP wait policy (fader_kit.util.threads): cgroup quotas read from hand-made
cgroup trees, the user's settings left alone, and the command line's ``--threads`` winning."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fader_kit.cli import main as cli
from fader_kit.errors import ConfigError
from fader_kit.util import threads
from fader_kit.util.threads import (
    cgroup_cpu_limit, choose_threads, prepare_environment, usable_cpus, worker_environment,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def test_cgroup_v2_quota_of_the_process_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "max 100000")
    write(root / "jobs" / "cpu.max", "max 100000")
    write(root / "jobs" / "one" / "cpu.max", "150000 100000")
    proc = write(tmp_path / "proc", "0::/jobs/one")
    assert cgroup_cpu_limit(root, proc) == 1.5


def test_cgroup_v2_an_ancestor_tighter_than_the_leaf_wins(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "jobs" / "cpu.max", "50000 100000")
    write(root / "jobs" / "one" / "cpu.max", "400000 100000")
    proc = write(tmp_path / "proc", "0::/jobs/one")
    assert cgroup_cpu_limit(root, proc) == 0.5


def test_cgroup_v2_inside_a_container_reads_the_mount_root(tmp_path: Path) -> None:
    # a cgroup namespace shows "0::/" (or a host path that is not mounted here): the container's own
    # cgroup is the mount's root
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "200000 100000")
    assert cgroup_cpu_limit(root, write(tmp_path / "proc", "0::/")) == 2.0
    assert cgroup_cpu_limit(root, write(tmp_path / "proc2", "0::/docker/abc123")) == 2.0


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    mount = root / "cpu,cpuacct"
    write(mount / "docker" / "cpu.cfs_quota_us", "100000")
    write(mount / "docker" / "cpu.cfs_period_us", "100000")
    write(mount / "docker" / "x" / "cpu.cfs_quota_us", "-1")  # no quota of its own: the parent's holds
    write(mount / "docker" / "x" / "cpu.cfs_period_us", "100000")
    proc = write(tmp_path / "proc", "5:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n0::/")
    assert cgroup_cpu_limit(root, proc) == 1.0


@pytest.mark.parametrize("files", [
    {},  # no cgroup file system at all
    {"cpu.max": "max 100000"},  # v2, unlimited
    {"cpu.max": "garbage"},  # unreadable: no limit rather than a crash
    {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},  # v1, unlimited
])
def test_no_quota(tmp_path: Path, files: dict[str, str]) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in files.items():
        write(root / name, text)
    proc = write(tmp_path / "proc", "1:cpu:/\n0::/")
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(root, tmp_path / "missing") is None


@pytest.mark.parametrize(("affinity", "limit", "expected"), [
    ({0, 1, 2, 3}, None, 4),
    ({0, 1, 2, 3}, 1.5, 2),  # a quota of one and a half CPUs: two threads, each running half the time
    ({0, 1, 2, 3}, 2.0, 2),
    ({0, 1, 2, 3}, 0.3, 1),  # never fewer than one
    ({5}, 8.0, 1),  # pinned to one CPU: the quota does not add any
    (2, None, 2),
])
def test_usable_cpus(affinity: set[int] | int, limit: float | None, expected: int) -> None:
    assert usable_cpus(affinity, limit) == expected


def test_wait_policy_is_set_only_where_the_user_has_not_set_it() -> None:
    ours = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000"}
    env: dict[str, str] = {}
    assert prepare_environment(env) == ours and env == ours
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}  # a chosen policy gets no spin count of ours either
    assert prepare_environment(mine) == {} and mine == {"OMP_WAIT_POLICY": "ACTIVE"}
    spin = {"GOMP_SPINCOUNT": "0"}
    assert prepare_environment(spin) == {"OMP_WAIT_POLICY": "PASSIVE"} and spin["GOMP_SPINCOUNT"] == "0"
    assert worker_environment({}) == ours
    assert worker_environment({"OMP_WAIT_POLICY": "ACTIVE", "PATH": "/bin"}) == {"OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.parametrize(("requested", "current", "env", "cpus", "expected"), [
    (3, 2, {}, 2, 3),  # --threads wins, even above the usable CPUs
    (1, 2, {"OMP_NUM_THREADS": "4"}, 2, 1),  # ... and over the user's OMP_NUM_THREADS
    (2, 2, {}, 1, None),  # already so
    (None, 4, {}, 2, 2),  # a quota or affinity below torch's default lowers it
    (None, 2, {}, 4, None),  # never raised: torch's default (and the numbers made with it) stands
    (None, 1, {}, 2, None),  # a program that chose one thread keeps it
    (None, 4, {"OMP_NUM_THREADS": "3"}, 2, None),  # the user's OMP_NUM_THREADS, which torch honours
    (0, 4, {}, 2, 2),  # --threads 0 means the default
])
def test_choose_threads(requested: int | None, current: int, env: dict[str, str], cpus: int,
                        expected: int | None) -> None:
    assert choose_threads(requested, current, env, cpus) == expected


def test_negative_threads_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="--threads -2"):
        choose_threads(-2, 2, {}, 2)


@pytest.mark.parametrize(("argv", "expected"), [(["--threads", "3"], 3), ([], None)])
def test_the_command_line_applies_threads_before_the_command_runs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        argv: list[str], expected: int | None) -> None:
    seen: list[int | None] = []
    monkeypatch.setattr(threads, "apply_torch_threads", lambda requested=None, environ=None: seen.append(requested))
    monkeypatch.setattr(threads, "prepare_environment", lambda environ=None: {})
    status = cli.main(["predict", str(tmp_path / "no-model"), "--out", str(tmp_path / "out"), *argv])
    assert status == cli.EXIT_USAGE and "error:" in capsys.readouterr().err  # one input only: a usage error
    assert seen == [expected]


def test_a_command_sets_the_wait_policy_and_its_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    before = torch.get_num_threads()
    try:
        cli.main(["predict", str(tmp_path / "no-model"), "--out", str(tmp_path / "out"), "--threads", "2"])
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # for torch in the processes it starts (and a CLI run's own)
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        cli.main(["predict", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")])
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's own stays
        assert torch.get_num_threads() == min(2, usable_cpus())  # without --threads: capped, never raised
    finally:
        torch.set_num_threads(before)
