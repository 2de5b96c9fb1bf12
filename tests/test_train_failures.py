"""``wgan-ext train`` on a bad day: numbers the run cannot hold, a diverging run, corrupted or
altered checkpoints, a full disk, Ctrl-C during start-up, a run folder without a checkpoint,
missing extras. Each ends in one or two lines on stderr, its own exit code, and nothing lost."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from _train_util import read_checkpoint, same

from wgan_ext import cli
from wgan_ext import data as D
from wgan_ext import train as T
from wgan_ext import train_checkpoint as TC
from wgan_ext.train_errors import EXIT_CODES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden", "16", "--generator-hidden", "16", "--eval-samples", "64", "--no-progress", "--quiet"]


def _train(run, *extra):
    return cli.main(["train", "--out", str(run), *TINY, *extra])


def _failure(capsys, rc, code, *expect):
    """The run ended with exit code ``code`` and one or two lines on stderr holding ``expect``."""
    err = capsys.readouterr().err
    assert rc == code, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    for e in expect:
        assert e in err, err
    return lines


def _files(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_exit_codes_are_distinct_and_documented(capsys) -> None:
    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for code, what in EXIT_CODES.items():
        assert f"{code:>3}  {what}" in text
    readme = open(os.path.join(ROOT, "README.md")).read()
    for code in EXIT_CODES:
        assert f"| {code} |" in readme, code


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("argv, expect", [
    (["--c", "1e39"], "--c 1e+39 does not fit float32"),
    (["--lr", "1e39"], "--lr 1e+39 does not fit float32"),
    (["--lr", "1e39", "--optimizer", "rmsprop"], "--lr 1e+39 does not fit float32"),
    (["--loss", "gp", "--gp-lambda", "1e39"], "--gp-lambda 1e+39 does not fit float32"),
    (["--c", "1e-50"], "--c 1e-50 rounds to 0 in float32"),
    (["--hidden", "100000000"], "for the networks (--hidden 100000000"),
    (["--eval-samples", "300000"], "for the evaluation (--eval-samples 300000"),
    (["--batch-size", "10000000000"], "for the batch (--batch-size 10000000000"),
    (["--encoding-dims", "100000000000"], "--encoding-dims 100000000000"),
    (["--hidden", str(10**30)], f"networks of --hidden {10**30}"),
])
def test_numbers_the_run_cannot_hold_are_refused_before_anything_is_written(tmp_path, capsys, argv, expect) -> None:
    rc = _train(tmp_path / "run", *argv)
    _failure(capsys, rc, 2, expect)
    assert os.listdir(tmp_path) == []


def test_numbers_are_checked_once_for_every_process(tmp_path, capsys) -> None:
    from wgan_ext.train_distributed import gloo_available

    if not gloo_available():
        pytest.skip("no gloo")
    rc = _train(tmp_path / "run", "--nproc", "2", "--lr", "1e39")
    _failure(capsys, rc, 2, "--lr 1e+39 does not fit float32")
    assert os.listdir(tmp_path) == []


def test_memory_estimate_counts_the_networks_parameters() -> None:
    """The meta-device count equals the parameters of the networks built for real, and the
    estimate grows with the evaluation's n x n float64 cost matrix."""
    from wgan_ext.train_limits import _measure, estimate_memory
    from wgan_ext.train_setup import build_network

    source = D.make_source("8gaussians")
    cfg = T.resolve_config(T.TrainConfig(hidden=24, generator_hidden=20, encoding_dims=3), source)
    network = build_network(cfg, source)
    real = [sum(p.numel() for p in network[k]["name"](**network[k]["args"]).parameters())
            for k in ("generator", "discriminator")]
    g, h = 20, 24  # by hand: 3 hidden layers of 20 / 24 units, 3-D noise, 2-D samples, 1 critic output
    assert real == [3 * g + g + 2 * (g * g + g) + g * 2 + 2, 2 * h + h + 2 * (h * h + h) + h + 1]
    assert list(_measure(cfg, source)[:2]) == real
    small = estimate_memory(cfg, source)["evaluation"][0]
    big = estimate_memory(T.resolve_config(T.TrainConfig(hidden=24, encoding_dims=3, eval_samples=1024), source),
                          source)["evaluation"][0]
    assert big - small >= 8 * (1024**2 - 512**2)


# ----------------------------------------------------------------------------- divergence


def test_evaluator_scores_nan_samples_as_nan() -> None:
    from wgan_ext.train_eval import Evaluator

    ev = Evaluator(D.make_source("8gaussians"), 32, 0, 2, torch.device("cpu"))

    class NaNGenerator(torch.nn.Module):
        def forward(self, z):
            return torch.full((len(z), 2), math.nan)

    row, fake = ev(NaNGenerator(), torch.nn.Linear(2, 1))
    assert torch.isnan(fake).all()
    assert math.isnan(row["w1"]) and math.isnan(row["modes"]) and math.isnan(row["critic_w_eval"])


def test_diverged_run_stops_and_keeps_its_last_finite_checkpoint(tmp_path) -> None:
    """Critic weights turned NaN in the second period: the evaluation that sees them stops the
    run, metrics.csv records it with NaN scores, and the first period's checkpoint stays."""
    def poison(run) -> None:
        if run.gen_updates == 3:
            with torch.no_grad():
                next(run.trainer.discriminator.parameters()).fill_(math.nan)

    cfg = T.TrainConfig(out=str(tmp_path / "run"), hidden=16, generator_hidden=16, eval_samples=64, iterations=6, log_every=2)
    with pytest.raises(T.DivergedError) as e:
        T.run(cfg, progress=False, quiet=True, on_batch=poison)
    assert str(e.value).splitlines() == [
        "training diverged: the generator and critic weights hold NaN or inf at generator iteration 4",
        f"{cfg.out} keeps the checkpoint of generator iteration 2, the last finite one; start a new run with a "
        f"smaller --lr than {T.TOY_DEFAULTS['lr']:g}"]
    ck = T.load_checkpoint(os.path.join(cfg.out, T.CHECKPOINT_NAME))
    assert TC.generator_updates(ck) == 2
    assert all(torch.isfinite(v).all() for v in ck["models"]["discriminator"].values())
    rows = open(os.path.join(cfg.out, "metrics.csv")).read().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "2", "4"]
    header = rows[0].split(",")
    assert rows[-1].split(",")[header.index("w1")] == ""  # NaN
    assert json.load(open(os.path.join(cfg.out, "summary.json")))["diverged_at"] == 4
    assert not os.path.exists(os.path.join(cfg.out, "samples", "step_000004.png"))


def test_ctrl_c_never_saves_non_finite_weights(tmp_path) -> None:
    def poison_then_stop(run) -> None:
        if run.stream.position == 13:
            with torch.no_grad():
                next(run.trainer.generator.parameters()).fill_(math.inf)
            os.kill(os.getpid(), signal.SIGINT)

    cfg = T.TrainConfig(out=str(tmp_path / "run"), hidden=16, generator_hidden=16, eval_samples=64, iterations=6, log_every=2)
    with pytest.raises(T.DivergedError, match="the generator weights hold NaN or inf at generator iteration 2"):
        T.run(cfg, progress=False, quiet=True, on_batch=poison_then_stop)
    ck = read_checkpoint(cfg.out)
    assert ck["loop"]["stream_position"] == 10  # the period's checkpoint, not one at batch 13
    assert all(torch.isfinite(v).all() for v in ck["models"]["generator"].values())


def test_diverging_lr_is_exit_5(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    rc = _train(run, "--loss", "gp", "--lr", "1e30", "--iterations", "4", "--log-every", "2")
    _failure(capsys, rc, 5, "training diverged:", "NaN or inf at generator iteration 2",
             "no checkpoint was written before it; start a new run with a smaller --lr than 1e+30")
    assert not (run / T.CHECKPOINT_NAME).exists()


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-iteration run to alter copies of."""
    run = tmp_path_factory.mktemp("done") / "run"
    assert cli.main(["train", "--out", str(run), *TINY, "--iterations", "2", "--log-every", "2"]) == 0
    return run


def _copy(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run")


def _resume(run, *extra):
    return cli.main(["train", "--resume", str(run), "--iterations", "4", "--no-progress", "--quiet", *extra])


def test_bytes_changed_inside_the_checkpoint_are_detected(finished_run, tmp_path, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    ck = run / T.CHECKPOINT_NAME
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0x55  # inside a tensor's bytes: torch.load would not notice
    ck.write_bytes(bytes(data))
    before = _files(run)
    lines = _failure(capsys, _resume(run), 4)
    assert lines == [f"wgan-ext train: error: checkpoint '{ck}' is corrupted: its SHA-256 differs from the one "
                     "recorded when it was written",
                     "restore it (and its .sha256) from a backup, or start a new run"]
    assert _files(run) == before


def test_checkpoint_without_its_record_is_refused(finished_run, tmp_path, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    os.remove(run / "checkpoint.pt.sha256")
    _failure(capsys, _resume(run), 4, "has no SHA-256 record beside it",
             "record it (in its folder): sha256sum checkpoint.pt > checkpoint.pt.sha256")
    # the line it suggests makes the record sha256sum would (and the run resumes)
    import hashlib

    digest = hashlib.sha256((run / "checkpoint.pt").read_bytes()).hexdigest()
    (run / "checkpoint.pt.sha256").write_text(f"{digest}  checkpoint.pt\n")
    assert _resume(run) == 0


def _alter_discriminator_opt(ck, key, value):
    ck["optimizers"]["optimizer_discriminator"]["param_groups"][0][key] = value


@pytest.mark.parametrize("alter, expect", [
    (lambda ck: ck["optimizers"]["optimizer_discriminator"]["state"][0].update(square_avg=torch.zeros(5)),
     "optimizer_discriminator's square_avg of parameter 0 has shape [5], the parameter [16, 2]"),
    (lambda ck: _alter_discriminator_opt(ck, "clip", -1.0), "optimizer_discriminator's clip is -1.0"),
    (lambda ck: _alter_discriminator_opt(ck, "lr", 1.0), "optimizer_discriminator's lr is 1.0"),
    (lambda ck: ck["config"].update(c=-1.0), "holds an invalid setting: c must be > 0"),
    (lambda ck: ck["config"].update(hidden="abc"), "holds an invalid setting"),
    (lambda ck: ck["loop"].update(stream_position="abc"), "stream_position is 'abc', not a count >= 0"),
    (lambda ck: ck["loop"].update(next_period=-1), "next_period is -1, not a count >= 0"),
    (lambda ck: ck["loop"].update(elapsed=math.nan), "elapsed is nan"),
    (lambda ck: ck["loop"].update(period_stats={"w_sum": 0.0}), "period_stats is"),
    (lambda ck: ck["loop"]["period_stats"].update(score_sums={"w1": 1.0}, score_counts={"w1": -1}), "period_stats is"),
    (lambda ck: ck["loop"]["period_stats"].update(score_sums={"loss": 1.0}, score_counts={"loss": 1}), "period_stats is"),
    (lambda ck: ck["rng"].update(torch=torch.zeros(7, dtype=torch.uint8)), "a random generator state does not restore"),
    (lambda ck: ck["rng"]["numpy"].__setitem__(1, torch.zeros(3, dtype=torch.int64)),
     "a random generator state does not restore"),
    (lambda ck: ck["rng"].update(python=(3, (1, 2), None)), "a random generator state does not restore"),
    (lambda ck: ck["losses"]["critic"]["_extra_state"]["counter"].update(generator_updates=-3),
     "no generator update count"),
    (lambda ck: ck["models"]["discriminator"].pop(next(iter(ck["models"]["discriminator"]))),
     "its networks do not fit the run's"),
])
def test_checkpoint_contents_are_checked_before_loading(finished_run, tmp_path, capsys, alter, expect) -> None:
    """A checkpoint altered and re-recorded (its SHA-256 matches) but holding bad contents: two
    lines, exit 4, nothing modified."""
    run = _copy(finished_run, tmp_path)
    path = str(run / T.CHECKPOINT_NAME)
    ck = torch.load(path, weights_only=True)
    alter(ck)
    T.save_checkpoint(path, ck)
    before = _files(run)
    lines = _failure(capsys, _resume(run), 4, expect)
    assert len(lines) == 2 and "restore it from a backup, or start a new run" in lines[1]
    assert _files(run) == before


# ----------------------------------------------------------------------------- disk full


def _full_disk_after(monkeypatch, checkpoints_written: int) -> None:
    """Writes of checkpoint data fail with ENOSPC once ``checkpoints_written`` checkpoints are
    written (the run's own ``open`` in wgan_ext.train_checkpoint)."""
    real_open = open
    done = [0]

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if done[0] >= checkpoints_written:
                self.f.write(bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done[0] += 1
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if mode == "wb" else f

    monkeypatch.setattr(TC, "open", fake_open, raising=False)


def test_disk_full_while_saving_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch) -> None:
    run = tmp_path / "run"
    _full_disk_after(monkeypatch, 1)
    rc = _train(run, "--iterations", "4", "--log-every", "2")
    lines = _failure(capsys, rc, 6)
    assert lines == [
        f"wgan-ext train: error: could not write '{run / T.CHECKPOINT_NAME}': No space left on device",
        f"{run} keeps the checkpoint of generator iteration 2: continue with: wgan-ext train --resume {run}"]
    assert [p.name for p in run.iterdir() if p.name.startswith(".tmp")] == []
    monkeypatch.undo()
    assert TC.generator_updates(T.load_checkpoint(str(run / T.CHECKPOINT_NAME))) == 2
    assert cli.main(["train", "--resume", str(run), "--no-progress", "--quiet"]) == 0
    assert TC.generator_updates(T.load_checkpoint(str(run / T.CHECKPOINT_NAME))) == 4


@pytest.mark.slow
def test_disk_full_on_a_real_small_filesystem(tmp_path, capsys) -> None:
    """A 900 KB tmpfs as --out fills up somewhere (a plot, metrics, the checkpoint): exit 6,
    two lines, and the last checkpoint written verifies and loads."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = mnt / "run"
        rc = cli.main(["train", "--out", str(run), "--eval-samples", "64", "--iterations", "400", "--log-every", "5",
                       "--no-progress", "--quiet"])
        lines = _failure(capsys, rc, 6, "No space left on device")
        assert len(lines) == 2
        if (run / T.CHECKPOINT_NAME).exists():
            T.load_checkpoint(str(run / T.CHECKPOINT_NAME))
            assert "continue with: wgan-ext train --resume" in lines[1]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ----------------------------------------------------------------------------- start-up and folders


def test_interrupted_start_up_leaves_a_folder_that_resumes_from_the_beginning(tmp_path, capsys, monkeypatch) -> None:
    """Ctrl-C before the first checkpoint: two lines, exit 130; --resume on the folder that holds
    only its config then trains that config from the beginning, bit for bit as a fresh run."""
    run = tmp_path / "run"

    def ctrl_c(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(T._Run, "train", ctrl_c)
        rc = _train(run, "--iterations", "2", "--log-every", "2", "--seed", "5")
    assert _failure(capsys, rc, 130) == [
        "wgan-ext: interrupted before the first checkpoint",
        f"start it again with: wgan-ext train --resume {run}"]
    assert (run / "config.json").exists() and not (run / T.CHECKPOINT_NAME).exists()
    assert cli.main(["train", "--resume", str(run), "--no-progress", "--quiet"]) == 0
    fresh = tmp_path / "fresh"
    assert _train(fresh, "--iterations", "2", "--log-every", "2", "--seed", "5") == 0
    same(read_checkpoint(fresh)["models"], read_checkpoint(run)["models"], "models")


def test_repeating_the_command_after_an_interrupted_start_up(tmp_path, capsys, monkeypatch) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(T._Run, "train", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
        assert _train(run, "--iterations", "2", "--log-every", "2") == 130
    assert _train(run, "--iterations", "2", "--log-every", "2") == 0  # not "already holds a run"
    assert TC.generator_updates(read_checkpoint(run)) == 2


def test_interrupt_before_the_folder_exists(tmp_path, capsys, monkeypatch) -> None:
    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "make_source", ctrl_c)
    rc = _train(tmp_path / "run", "--iterations", "2")
    assert _failure(capsys, rc, 130) == [
        "wgan-ext: interrupted before the run started; nothing to keep: run the same command again"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_in_the_first_seconds_of_a_real_process(tmp_path, delay) -> None:
    """SIGINT while the command imports torch, checks its input or builds the networks: exit
    130, at most two lines, no traceback."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "wgan_ext.cli", "train", "--out", str(tmp_path / "run"), *TINY],
                            env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 2, err


def test_importing_the_command_does_not_load_torch() -> None:
    """What lets Ctrl-C be handled from the first moment: torch loads inside main()."""
    code = "import sys, wgan_ext.cli; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_resume_with_another_out_is_refused(finished_run, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    rc = cli.main(["train", "--resume", str(finished_run), "--out", str(other), "--iterations", "4"])
    _failure(capsys, rc, 2, f"--resume {finished_run} continues the run in", f"--out {other} names another")
    assert not other.exists()


def test_resume_of_a_folder_without_a_run(tmp_path, capsys) -> None:
    (tmp_path / "run").mkdir()
    rc = cli.main(["train", "--resume", str(tmp_path / "run")])
    _failure(capsys, rc, 2, "nothing to resume:", "holds no checkpoint.pt and no config.json")


def test_missing_train_extras_are_named_before_anything_is_created(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import fails
    rc = _train(tmp_path / "run", "--iterations", "2")
    assert _failure(capsys, rc, 3) == [
        "wgan-ext train: error: missing packages of the [train] extras: matplotlib",
        'install them with: pip install "wgan-ext[train]"']
    assert os.listdir(tmp_path) == []
