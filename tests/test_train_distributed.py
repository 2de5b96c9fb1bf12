"""``wgan-ext train`` on 2 CPU processes (gloo, loopback), each test bounded by timeouts:

* the main job under ``torchrun -m wgan_ext train``: one run folder, ``world_size`` 2 recorded,
  rank 1 writes nothing (an audit hook in every worker records what it opens for writing), the
  critic inside [-c, c];
* DDP replicas bit-identical; Ctrl-C on one rank stops both after the same update, and the
  resumed run ends bit-identical to the uninterrupted one;
* ``--fsdp`` under torchrun, resumed with ``--nproc``: bit-identical to the uninterrupted run;
* each rank's share of a batch; bad combinations are one line on stderr, exit 2.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist

from _dist_util import NEEDS_GLOO, init_gloo, require_fsdp2, spawn
from _train_util import assert_continued_exactly, read_checkpoint

from wgan_ext import cli
from wgan_ext import data as D
from wgan_ext import train as T
from wgan_ext.train_distributed import ShardedBatchStream

pytestmark = [NEEDS_GLOO]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = 0.01
TINY = ["--hidden", "16", "--generator-hidden", "16", "--eval-samples", "64", "--log-every", "10", "--no-progress", "--quiet"]
TIMEOUT = 240  # seconds per launch; a tiny run takes about 10 s on 2 busy cores

# Installed in every worker through sitecustomize: records the paths each rank opens for
# writing, creates, renames or removes, and leaves them in AUDIT.<rank> at exit.
AUDIT_HOOK = '''
import atexit, os, sys
_out = os.environ.get("WGAN_EXT_TEST_AUDIT")
if _out and "RANK" in os.environ:
    _log = []
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if event == "open" and isinstance(args[0], str):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE):
                _log.append(os.path.abspath(args[0]))
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate") and isinstance(args[0], str):
            _log.append(os.path.abspath(args[0]))
        elif event == "os.rename" and isinstance(args[1], str):
            _log.append(os.path.abspath(args[1]))

    sys.addaudithook(_hook)

    @atexit.register
    def _dump():
        path = _out + "." + os.environ["RANK"]
        seen = [p for p in _log if not p.startswith(_out)]
        with open(path, "w") as f:
            f.write("\\n".join(seen))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path) -> dict:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    path = os.pathsep.join([str(hook), ROOT, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
            "WGAN_EXT_TEST_AUDIT": str(tmp_path / "audit")}


def _torchrun(tmp_path, cwd, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "wgan_ext", "train", *args]
    return subprocess.run(cmd, cwd=str(cwd), env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)


def _nproc(tmp_path, cwd, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wgan_ext", "train", "--nproc", "2", *args]
    return subprocess.run(cmd, cwd=str(cwd), env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)


def _written(tmp_path, rank: int, under) -> list:
    with open(f"{tmp_path / 'audit'}.{rank}") as f:
        return [p for p in f.read().splitlines() if p.startswith(str(under) + os.sep)]


def _critic_max(ck) -> float:
    return max(v.abs().max().item() for v in ck["models"]["discriminator"].values())


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_main_job_writes_one_run_folder_from_rank_0(tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    res = _torchrun(tmp_path, work, *TINY, "--iterations", "20", "--out", "run")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("done: 20 generator iterations (100 critic updates)") == 1  # rank 0 reports
    assert "on 2 processes" in res.stdout
    run = work / "run"
    assert os.listdir(work) == ["run"]
    assert sorted(os.listdir(run / "samples")) == ["step_000000.png", "step_000010.png", "step_000020.png"]
    for name in ("config.json", "summary.json", "metrics.csv", "curves.png", T.CHECKPOINT_NAME):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert (summary["world_size"], summary["generator_iterations"], summary["critic_iterations"]) == (2, 20, 100)
    assert (config["world_size"], config["fsdp"], config["batch_size"]) == (2, False, T.TOY_DEFAULTS["batch_size"])
    ck = read_checkpoint(run)
    assert _critic_max(ck) <= C and _critic_max(ck) == pytest.approx(C)  # clipped, and the clip was active
    # one entry per rank; rank 1 draws its noise from a stream of its own
    assert len(ck["ranks"]) == 2
    assert not torch.equal(ck["ranks"][0]["rng"]["torch"], ck["ranks"][1]["rng"]["torch"])
    assert torch.equal(ck["ranks"][0]["rng"]["torch"], ck["rng"]["torch"])
    # what each rank wrote under the working folder
    assert _written(tmp_path, 1, work) == []
    by_rank_0 = _written(tmp_path, 0, work)
    assert str(run / T.CHECKPOINT_NAME) in by_rank_0 and str(run / "summary.json") in by_rank_0


@pytest.mark.slow
def test_fsdp_under_torchrun_then_resumed_with_nproc_continues_exactly(tmp_path) -> None:
    require_fsdp2()
    work = tmp_path / "work"
    work.mkdir()
    # a constant lr: with --lr-decay linear a run of 10 extended to 20 follows another ramp; rank 0
    # also scores the generator mid-period (--score-every 5), alone
    full = _torchrun(tmp_path, work, *TINY, "--fsdp", "--lr-decay", "none", "--score-every", "5", "--iterations", "20",
                     "--out", "full")
    assert full.returncode == 0, full.stderr[-3000:]
    cut = _torchrun(tmp_path, work, *TINY, "--fsdp", "--lr-decay", "none", "--score-every", "5", "--iterations", "10",
                    "--out", "cut")
    assert cut.returncode == 0, cut.stderr[-3000:]
    resumed = _nproc(tmp_path, work, "--resume", "cut", "--iterations", "20", "--no-progress", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr == ""  # the launcher adds nothing to what the workers say
    a, b = read_checkpoint(work / "full"), read_checkpoint(work / "cut")
    assert (b["config"]["fsdp"], b["config"]["world_size"]) == (True, 2)
    assert _critic_max(b) <= C
    assert_continued_exactly(a, b, ranks=True)
    assert all(r["w1_period"] != r["w1"] for r in a["loop"]["history"][1:])  # the mid-period scores count
    assert _written(tmp_path, 1, work) == []  # the resumed run's rank 1 wrote nothing either


# ----------------------------------------------------------------------------- in-process ranks


def _cfg(tmp: str, name: str) -> T.TrainConfig:
    return T.TrainConfig(out=os.path.join(tmp, name), hidden=16, generator_hidden=16, eval_samples=64, log_every=10, iterations=20)


def _ddp_worker(rank: int, tmp: str) -> None:
    init_gloo(rank, tmp, 2)
    held = {}
    T.run(_cfg(tmp, "full"), progress=False, quiet=True, on_batch=lambda r: held.setdefault("run", r))
    trainer = held["run"].trainer
    flat = torch.cat([p.detach().flatten() for name in ("generator", "discriminator")
                      for p in getattr(trainer, name).parameters()])
    replicas = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(replicas, flat)

    def ctrl_c_on_rank_1(r) -> None:
        if rank == 1 and r.stream.position == 63:  # mid-period, between two generator updates
            os.kill(os.getpid(), signal.SIGINT)

    cut = T.run(_cfg(tmp, "cut"), progress=False, quiet=True, on_batch=ctrl_c_on_rank_1)
    done = cut.summary["generator_iterations"]
    resumed = T.run(T.TrainConfig(out=os.path.join(tmp, "cut")), resume=True, progress=False, quiet=True)
    torch.save({"replicas": replicas, "interrupted": cut.interrupted, "done": done,
                "resumed": resumed.summary["generator_iterations"]}, os.path.join(tmp, f"rank{rank}.pt"))
    held.clear()
    gc.collect()  # the DDP modules hold the process group: free them before destroying it
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_replicas_agree_and_ctrl_c_on_one_rank_resumes_exactly() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spawn(_ddp_worker, (tmp,), nprocs=2)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
        full, cut = read_checkpoint(os.path.join(tmp, "full")), read_checkpoint(os.path.join(tmp, "cut"))
    replicas = ranks[0]["replicas"]
    assert torch.equal(replicas[0], replicas[1])  # generator and critic, bit for bit
    # SIGINT reached rank 1 only; both stopped after the same generator update (the next one)
    assert [r["interrupted"] for r in ranks] == [True, True]
    assert [r["done"] for r in ranks] == [13, 13]
    assert [r["resumed"] for r in ranks] == [20, 20]
    assert_continued_exactly(full, cut, ranks=True)
    assert _critic_max(full) <= C


# ----------------------------------------------------------------------------- shares and errors


@pytest.mark.parametrize("name", ["8gaussians", "digits"])
def test_ranks_share_each_batch_of_m(name) -> None:
    source = D.make_source(name)
    whole = D.BatchStream(source, 64, 3).take(4)
    shares = [ShardedBatchStream(source, 64, 3, rank, 4) for rank in range(4)]
    assert [s.batch_size for s in shares] == [16] * 4  # torchgan draws this many noise vectors per rank
    parts = [s.take(4) for s in shares]
    for i in range(4):
        assert torch.equal(torch.cat([p[i] for p in parts]), whole[i])
    assert shares[0].position == 4


def test_a_rank_reads_only_its_rows_of_an_image_batch() -> None:
    reads = []

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int):
            reads.append(i)
            return torch.full((1, 2, 2), float(i)), 0

    source = D.DatasetSource("files", Files(), (1, 2, 2))
    whole = source.batch(5, 8, 0)
    reads.clear()
    mine = source.batch_rows(5, 8, 0, slice(4, 8))
    assert torch.equal(mine, whole[4:8]) and len(reads) == 4


@pytest.mark.parametrize("argv, expect", [
    (["--fsdp"], "--fsdp shards the critic over several processes: launch with torchrun"),
    (["--nproc", "0"], "argument --nproc: must be >= 1, got 0"),
    (["--nproc", "3", "--batch-size", "64"], "batch size 64 is the global batch m, split evenly over 3 processes: "
                                             "it must be a multiple of 3"),
    (["--nproc", "2", "--fsdp", "--loss", "gp"], "--fsdp cannot train --loss gp"),
])
def test_bad_combinations_are_one_line_exit_2(tmp_path, capsys, argv, expect) -> None:
    rc = cli.main(["train", "--out", str(tmp_path / "run"), "--iterations", "2", *argv])
    captured = capsys.readouterr()
    assert rc == 2 and captured.err.splitlines() == [captured.err.strip()] and expect in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "run").exists()


def test_nproc_under_torchrun_is_refused(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = cli.main(["train", "--out", str(tmp_path / "run"), "--nproc", "2"])
    assert rc == 2
    assert capsys.readouterr().err == ("wgan-ext train: error: --nproc 2 launches its own processes; "
                                       "under torchrun, leave it out\n")


@pytest.mark.slow
def test_resume_needs_the_same_number_of_processes(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert cli.main(["train", "--out", str(run), *TINY, "--iterations", "2", "--log-every", "2"]) == 0
    assert json.loads((run / "summary.json").read_text())["world_size"] == 1
    assert json.loads((run / "config.json").read_text())["world_size"] == 1
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    rc = cli.main(["train", "--resume", str(run), "--iterations", "4", "--nproc", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{str(run)!r} was trained by 1 process(es) and resumes only with as many" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
