"""The ``wgan-ext`` command: a tiny train run, bad input (one line, exit 2, nothing lost), the
info hook, and a real Ctrl-C in a subprocess followed by ``--resume``."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import time
import zlib

import pytest
import torch

from wgan_ext import cli
from wgan_ext.train_checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden", "16", "--eval-samples", "64", "--no-progress", "--quiet"]


def _train(tmp_path, *extra, name="run"):
    return cli.main(["train", "--out", str(tmp_path / name), *TINY, *extra])


def test_train_tiny_run_and_report(tmp_path, capsys) -> None:
    rc = _train(tmp_path, "--iterations", "6", "--log-every", "2", "--score-every", "1", "--lr", "1e-4", "--c", "0.02",
                "--seed", "3")
    assert rc == 0
    out = capsys.readouterr().out
    assert "done: 6 generator iterations (30 critic updates)" in out
    assert "exact W1" in out and "modes covered" in out
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    rho, snap = summary["spearman_critic_w1"], summary["spearman_critic_w1_at_evaluations"]
    assert f"Spearman(critic estimate, exact W1) over the run: {rho:.2f} (period means)" in out
    assert (f"; {snap:.2f} with exact W1 at the evaluations alone" in out) == (snap != rho)
    # the last evaluations (3 here, iteration 0 left out), recomputed from metrics.csv
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))[1:]
    modes = [int(r["modes"]) for r in rows]
    w1 = sum(float(r["w1"]) for r in rows) / 3
    hq = sum(float(r["high_quality"]) for r in rows) / 3
    assert summary["last_evaluations"]["count"] == 3
    assert summary["last_evaluations"]["w1_mean"] == pytest.approx(w1)
    assert f"over the last 3 evaluations: exact W1 {w1:.4f} on average, {min(modes)}-{max(modes)} modes, " \
           f"{100 * hq:.0f}% within 3 std on average" in out
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert (cfg["lr"], cfg["c"], cfg["seed"], cfg["iterations"], cfg["score_every"]) == (1e-4, 0.02, 3, 6, 1)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert max(v.abs().max().item() for v in ck["models"]["discriminator"].values()) <= 0.02


@pytest.mark.slow
def test_paper_schedule_flag(tmp_path) -> None:
    assert _train(tmp_path, "--iterations", "1", "--log-every", "1", "--paper-schedule") == 0
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["config"]["schedule"] == "paper"
    assert ck["losses"]["critic"]["_extra_state"]["counter"]["critic_updates"] == 100


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
    (["--seed", "99999999999999999999"], "seed must be an integer in [0, 4294967295], got 99999999999999999999"),
    (["--seed", "-1"], "seed must be an integer in [0, 4294967295], got -1"),
    (["--device", "meta"], "device 'meta' cannot train; use cpu, cuda, cuda:N or mps"),
    (["--device", "mps"], "device 'mps' requested but MPS is not available"),
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--threads", "100000"], "threads must be between 1 and"),
    (["--dataset", "digits", "--epochs", "inf"], "argument --epochs: must be a finite number > 0, got 'inf'"),
    (["--dataset", "digits", "--epochs", "nan"], "argument --epochs: must be a finite number > 0, got 'nan'"),
    (["--dataset", "digits", "--epochs", "-2"], "argument --epochs: must be a finite number > 0, got '-2'"),
    (["--out", "/dev/null"], "output folder '/dev/null' exists and is not a folder"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, expect) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)  # as on this machine, everywhere
    rc = _train(tmp_path, *argv)
    _one_line_error(capsys, rc, expect)
    assert not (tmp_path / "run").exists()  # nothing created


def test_output_folder_below_a_file(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    rc = cli.main(["train", "--out", str(blocker / "run"), *TINY, "--iterations", "1"])
    _one_line_error(capsys, rc, f"cannot be created: '{blocker}' is not a folder")
    assert blocker.read_text() == "keep me"


def _png_header(width: int, height: int) -> bytes:
    """A PNG with only its header: PIL reads the size from it without decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_image_claiming_30000x30000_pixels(tmp_path, capsys) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(_png_header(30000, 30000))
    rc = _train(tmp_path, "--dataset", "folder", "--data-dir", str(folder))
    line = _one_line_error(capsys, rc, f"cannot read image '{folder / 'bomb.png'}'")
    assert "900000000 pixels" in line
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(tmp_path, capsys) -> None:
    assert _train(tmp_path, "--iterations", "2", "--log-every", "2") == 0
    capsys.readouterr()
    before = {p: (tmp_path / "run" / p).read_bytes() for p in ("config.json", "metrics.csv", "checkpoint.pt")}
    rc = _train(tmp_path, "--iterations", "2")
    _one_line_error(capsys, rc, "already holds a run")
    for p, content in before.items():
        assert (tmp_path / "run" / p).read_bytes() == content


@pytest.mark.parametrize("content, reason", [
    (b"PK\x03\x04 truncated zip", "reason: RuntimeError: PytorchStreamReader failed reading zip archive: not a ZIP archive."),
    (bytes(range(256)) * 4, "reason: torch.load(weights_only=True): Unsupported operand 0"),
])
def test_unreadable_checkpoint_on_resume(tmp_path, capsys, content, reason) -> None:
    import hashlib

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(content)  # recorded as written: the SHA-256 check passes
    (run / "checkpoint.pt.sha256").write_text(f"{hashlib.sha256(content).hexdigest()}  checkpoint.pt\n")
    rc = cli.main(["train", "--resume", str(run), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 4 and "Traceback" not in captured.err
    assert captured.err.splitlines() == [
        f"wgan-ext train: error: checkpoint '{run / 'checkpoint.pt'}' is unreadable or not a wgan-ext checkpoint",
        reason,
    ]
    assert (run / "checkpoint.pt").read_bytes() == content
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "checkpoint.pt.sha256"]


def test_old_checkpoint_version_is_refused(tmp_path, capsys) -> None:
    assert _train(tmp_path, "--iterations", "2", "--log-every", "2") == 0
    ck_path = tmp_path / "run" / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    ck["version"] = 1
    save_checkpoint(str(ck_path), ck)
    capsys.readouterr()
    rc = cli.main(["train", "--resume", str(tmp_path / "run"), "--iterations", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 4 and err.splitlines() == [
        f"wgan-ext train: error: checkpoint '{ck_path}' has format version 1 (written by an older wgan-ext); "
        "this wgan-ext reads version 2", "start a new run"]


def test_resume_of_a_finished_run_says_nothing_to_do(tmp_path, capsys) -> None:
    assert _train(tmp_path, "--iterations", "2", "--log-every", "2") == 0
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"nothing to do: {run} has already done 2 of 2 generator iterations; "
        f"to train longer: wgan-ext train --resume {run} --iterations N"]
    assert out.err == ""
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


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


@pytest.mark.slow
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
    done = saved["losses"]["generator"]["_extra_state"]["generator_updates"]
    assert done >= 5
    # finish it: 5 more generator iterations than were done when interrupted
    rc = subprocess.run([sys.executable, "-m", "wgan_ext.cli", "train", "--resume", str(out),
                         "--iterations", str(done + 5), "--no-progress", "--quiet"],
                        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    assert f"done: {done + 5} generator iterations" in rc.stdout


def test_help_shows_no_default_noise_and_numbers_from_the_defaults(capsys, monkeypatch) -> None:
    from wgan_ext import train_config

    monkeypatch.setitem(train_config.TOY_DEFAULTS, "iterations", 12345)
    monkeypatch.setitem(train_config.IMAGE_DEFAULTS, "log_every", 321)
    monkeypatch.setitem(train_config.TOY_DEFAULTS, "log_every", 444)
    monkeypatch.setitem(train_config.TOY_DEFAULTS, "batch_size", 333)
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default:" not in text.replace("(default: on a terminal)", "")
    assert "12345 generator iterations" in text and "default 12345 on the 2-D toys" in text
    assert "default 444 on the 2-D toys, 250 on digits, 321 otherwise" in text
    assert "(default 333 on the 2-D toys, 64 otherwise)" in text and "batch 333)" in text
    assert "default 0.01)" in text and "(default 5)" in text


def _set_columns(fd: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))


@pytest.mark.slow
def test_terminal_of_zero_columns_gets_period_lines(tmp_path, capsys, monkeypatch) -> None:
    """A pseudo-terminal that reports 0 columns gets the lines a pipe gets, not a bar."""
    from wgan_ext.train_report import use_bar

    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w") as tty:
            _set_columns(slave, 80)
            assert use_bar(None, tty) is True
            _set_columns(slave, 0)
            assert use_bar(None, tty) is False
            assert use_bar(True, tty) is True  # --progress still forces it
            monkeypatch.setattr(sys, "stderr", tty)
            rc = cli.main(["train", "--out", str(tmp_path / "run"), "--hidden", "16", "--eval-samples", "64",
                           "--iterations", "4", "--log-every", "2"])
    finally:
        os.close(master)
    assert rc == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[")]
    assert [l[:9] for l in lines] == ["[     2/4", "[     4/4"]
    assert "critic W estimate" in lines[0] and "modes" in lines[0] and "within 3 std" in lines[0]
