"""The ``wgan-ext`` command: a tiny train run, bad input (one line, exit 2, nothing lost), the
info hook, and a real Ctrl-C in a subprocess followed by ``--resume``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from wgan_ext import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden", "16", "--eval-samples", "64", "--no-progress", "--quiet"]


def _train(tmp_path, *extra, name="run"):
    return cli.main(["train", "--out", str(tmp_path / name), *TINY, *extra])


def test_train_tiny_run_and_report(tmp_path, capsys) -> None:
    rc = _train(tmp_path, "--iterations", "6", "--log-every", "2", "--lr", "1e-4", "--c", "0.02", "--seed", "3")
    assert rc == 0
    out = capsys.readouterr().out
    assert "done: 6 generator iterations (30 critic updates)" in out
    assert "exact W1" in out and "modes covered" in out
    rho = json.load(open(tmp_path / "run" / "summary.json"))["spearman_critic_w1"]
    assert f"Spearman(critic estimate, exact W1) over the run: {rho:.2f}" in out
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert (cfg["lr"], cfg["c"], cfg["seed"], cfg["iterations"]) == (1e-4, 0.02, 3, 6)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert max(v.abs().max().item() for v in ck["models"]["discriminator"].values()) <= 0.02


def test_paper_schedule_flag(tmp_path) -> None:
    assert _train(tmp_path, "--iterations", "1", "--log-every", "1", "--paper-schedule") == 0
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["config"]["schedule"] == "paper"
    assert ck["losses"]["WassersteinCriticLoss"]["critic_updates"] == 100


def _one_line_error(capsys, rc, expect):
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expect in lines[0] and "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("argv, expect", [
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--loss", "wgan"], "invalid choice: 'wgan'"),
    (["--c", "0"], "c must be > 0"),
    (["--c", "-0.5"], "c must be > 0"),
    (["--c", "abc"], "expected a number"),
    (["--n-critic", "0"], "must be >= 1"),
    (["--dataset", "folder", "--data-dir", "/nonexistent/wgan-ext"], "does not exist"),
    (["--dataset", "mnist", "--data-dir", "."], "mnist files not found"),
    (["--iterations", "5", "--epochs", "1"], "not allowed with argument"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, expect) -> None:
    rc = _train(tmp_path, *argv)
    _one_line_error(capsys, rc, expect)
    assert not (tmp_path / "run").exists()  # nothing created


def test_unwritable_output_folder(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    rc = cli.main(["train", "--out", str(blocker / "run"), *TINY, "--iterations", "1"])
    _one_line_error(capsys, rc, "not writable")
    assert blocker.read_text() == "keep me"


def test_existing_run_is_not_overwritten(tmp_path, capsys) -> None:
    assert _train(tmp_path, "--iterations", "2", "--log-every", "2") == 0
    capsys.readouterr()
    before = {p: (tmp_path / "run" / p).read_bytes() for p in ("config.json", "metrics.csv", "checkpoint.pt")}
    rc = _train(tmp_path, "--iterations", "2")
    _one_line_error(capsys, rc, "already holds a run")
    for p, content in before.items():
        assert (tmp_path / "run" / p).read_bytes() == content


def test_corrupt_checkpoint_on_resume(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated zip")
    rc = cli.main(["train", "--resume", str(run), "--no-progress"])
    _one_line_error(capsys, rc, "corrupt")
    assert (run / "checkpoint.pt").read_bytes() == b"PK\x03\x04 truncated zip"


def test_resume_with_different_settings_is_refused(tmp_path, capsys) -> None:
    assert _train(tmp_path, "--iterations", "2", "--log-every", "2") == 0
    capsys.readouterr()
    rc = cli.main(["train", "--resume", "--out", str(tmp_path / "run"), "--n-critic", "3", "--no-progress"])
    _one_line_error(capsys, rc, "--n-critic 3 differs")


def test_info_hook(monkeypatch, capsys) -> None:
    import importlib.util

    if importlib.util.find_spec("wgan_ext.info") is not None:
        calls = []
        import wgan_ext.info as info

        monkeypatch.setattr(info, "main", lambda argv=None: calls.append(argv) or 0)
        assert cli.main(["info", "--json"]) == 0
        assert calls == [["--json"]]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wgan_ext.info" else real_find_spec(name, *a))
    assert cli.main(["info"]) == 2
    assert "not available" in capsys.readouterr().err


def test_no_subcommand_prints_help(capsys) -> None:
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().err


def test_ctrl_c_in_a_real_process_saves_and_resumes(tmp_path) -> None:
    """SIGINT to a running ``python -m wgan_ext.cli train``: exit 130 with a checkpoint; then
    ``--resume`` finishes the run."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "wgan_ext.cli", "train", "--out", str(out), *TINY,
           "--iterations", "100000", "--log-every", "5"]
    proc = subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ck = out / "checkpoint.pt"
        for _ in range(1200):  # wait for the first period's checkpoint (the run is well under way)
            if ck.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ck.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint after 120 s"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted at generator iteration" in stderr and "Traceback" not in stderr
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    done = saved["losses"]["WassersteinCriticLoss"]["generator_updates"]
    assert done >= 5
    # finish it: 5 more generator iterations than were done when interrupted
    rc = subprocess.run([sys.executable, "-m", "wgan_ext.cli", "train", "--resume", str(out),
                         "--iterations", str(done + 5), "--no-progress", "--quiet"],
                        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    assert f"done: {done + 5} generator iterations" in rc.stdout
