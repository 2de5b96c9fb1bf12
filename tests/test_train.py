"""The training run: Algorithm 1 through torchgan matches the hand-written reference bit for bit,
counts, outputs, interruption and resume (bit for bit on CPU), and checkpoint errors."""

from __future__ import annotations

import csv
import json
import math
import os
import signal

import pytest
import torch

from _train_util import assert_continued_exactly, read_checkpoint, same

from wgan_ext import data as D
from wgan_ext import train as T
from wgan_ext.train_config import DIGITS_DEFAULTS

TINY = dict(hidden=16, generator_hidden=16, eval_samples=64, log_every=10, iterations=30)


def _cfg(tmp_path, name="run", **kw) -> T.TrainConfig:
    args = {**TINY, **kw}
    return T.TrainConfig(out=str(tmp_path / name), **args)


def _rows(path):
    with open(os.path.join(path, "metrics.csv")) as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the yardstick


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, lr_decay", [("clipped-rmsprop", "linear"), ("rmsprop", "linear"),
                                                 ("rmsprop", "none")])
def test_torchgan_run_equals_hand_written_algorithm1(tmp_path, optimizer, lr_decay) -> None:
    """Our torchgan Trainer run and wgan_ext.reference.algorithm1 (plain PyTorch: RMSprop, then
    clamp_) end with the same generator and critic from the same initial weights, data and RNG
    state: bit for bit with RMSprop followed by the critic loss's clip, and within rtol 1e-5 with
    the clip fused into the critic's optimizer (the default, whose kernel rounds differently).
    With the linear decay the reference sets lr * (1 - g / T) itself before generator iteration g + 1."""
    from wgan_ext.networks import MLPCritic, MLPGenerator
    from wgan_ext.optim import ClippedRMSprop
    from wgan_ext.reference import algorithm1

    cfg = T.resolve_config(_cfg(tmp_path, iterations=12, log_every=4, optimizer=optimizer, lr_decay=lr_decay),
                           D.make_source("8gaussians"))
    source = D.make_source(cfg.dataset)
    os.makedirs(cfg.out)
    run = T._Run(cfg, source, cfg.out, progress=False, quiet=True, on_batch=None)
    assert isinstance(run.trainer.optimizer_discriminator, ClippedRMSprop) == (optimizer == "clipped-rmsprop")
    assert not isinstance(run.trainer.optimizer_generator, ClippedRMSprop)
    g0 = {k: v.clone() for k, v in run.trainer.generator.state_dict().items()}
    c0 = {k: v.clone() for k, v in run.trainer.discriminator.state_dict().items()}
    rng0 = torch.get_rng_state()
    assert run.train() is False

    G = MLPGenerator(encoding_dims=cfg.encoding_dims, out_shape=(2,), hidden=cfg.generator_hidden, n_hidden=cfg.n_hidden)
    C = MLPCritic(in_shape=(2,), hidden=cfg.hidden, n_hidden=cfg.n_hidden)
    G.load_state_dict(g0)
    C.load_state_dict(c0)
    torch.set_rng_state(rng0)
    stream = D.BatchStream(source, cfg.batch_size, cfg.seed)

    def decay(g: int, result) -> None:  # after generator iteration g + 1 (0-based g)
        for opt in (result.optimizer_generator, result.optimizer_critic):
            opt.param_groups[0]["lr"] = cfg.lr * (1 - (g + 1) / 12 if lr_decay == "linear" else 1)

    res = algorithm1(G, C, lambda: stream.take(1)[0], lambda m: torch.randn(m, cfg.encoding_dims),
                     n_gen_iters=12, n_critic=5, lr=cfg.lr, c=0.01, callback=decay)
    assert res.generator_updates == 12 and res.critic_updates == 60
    for model, ours in ((G, run.trainer.generator), (C, run.trainer.discriminator)):
        for k, v in model.state_dict().items():
            if optimizer == "rmsprop":
                assert torch.equal(v, ours.state_dict()[k]), k
            else:  # the fused kernel rounds once per stored value (ClippedRMSprop's stated bound)
                torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-5, atol=1e-7, msg=k)
    # the run stops on the batch of the 12th generator update: no critic update of a 13th
    assert run.critic_loss.critic_updates == 60 and run.stream.position == 60


# ----------------------------------------------------------------------------- counts and outputs


def test_run_writes_the_run_folder(tmp_path) -> None:
    res = T.run(_cfg(tmp_path), progress=False, quiet=True)
    out = res.out
    for name in ("config.json", "metrics.csv", "summary.json", "curves.png", T.CHECKPOINT_NAME):
        assert os.path.isfile(os.path.join(out, name)), name
    pngs = sorted(os.listdir(os.path.join(out, "samples")))
    assert pngs == ["step_000000.png", "step_000010.png", "step_000020.png", "step_000030.png"]
    rows = _rows(out)
    assert [int(r["gen_iter"]) for r in rows] == [0, 10, 20, 30]  # 0: the untrained generator
    # Algorithm 1 with n_critic = 5: 5 critic updates before each generator update
    assert [int(r["critic_iter"]) for r in rows] == [0, 50, 100, 150]
    assert rows[0]["critic_w"] == ""  # no critic update yet
    for r in rows[1:]:
        assert 0 <= int(r["modes"]) <= 8 and r["modes_total"] == "8"
        assert float(r["w1"]) > 0 and math.isfinite(float(r["critic_w"]))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["loss"], cfg["c"], cfg["n_critic"], cfg["optimizer"], cfg["batch_size"], cfg["lr_decay"]) == ("clip", 0.01, 5, "clipped-rmsprop", T.TOY_DEFAULTS["batch_size"], "linear")
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["generator_iterations"] == 30 and summary["interrupted"] is False
    assert summary["final"]["w1"] == pytest.approx(float(rows[-1]["w1"]))
    assert -1 <= summary["spearman_critic_w1"] <= 1
    # every critic weight is inside [-c, c] at the end (clipped after each update)
    ck = read_checkpoint(out)
    assert max(v.abs().max().item() for v in ck["models"]["discriminator"].values()) <= 0.01
    from PIL import Image

    with Image.open(os.path.join(out, "curves.png")) as im:
        assert im.size[0] > 200 and im.size[1] > 200


def test_curves_show_the_critic_trend_on_a_log_axis(tmp_path, monkeypatch) -> None:
    """The clipped critic's estimate (1e-4 ... 1e-5) gets its own log-scale panel, without the
    unclipped step-0 value (1e-2) that would flatten it."""
    import matplotlib.pyplot as plt

    from wgan_ext import plots as P

    rows = [{"gen_iter": 0, "critic_w": math.nan, "critic_w_eval": 1.3e-2, "gen_loss": math.nan, "w1": 1.4,
             "w1_floor": 0.1, "modes": 0, "modes_total": 8, "high_quality": 0.0}]
    rows += [{"gen_iter": 500 * k, "critic_w": 2e-4 / k, "critic_w_eval": 1.5e-4 / k, "gen_loss": -0.012,
              "w1": 0.4 / k, "w1_floor": 0.1, "modes": k % 8, "modes_total": 8, "high_quality": 0.05 * k}
             for k in range(1, 9)]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    P.plot_curves(str(tmp_path / "curves.png"), rows)
    critic, _, w1, modes = figures[0].axes[:4]
    assert critic.get_yscale() == "log"
    low, high = critic.get_ylim()
    assert 1.5e-4 / 8 * 0.5 < low < 1.5e-4 / 8 and 2e-4 < high < 1e-3  # fits the trained values only
    assert [list(line.get_xdata()) for line in critic.get_lines()] == [[500 * k for k in range(1, 9)]] * 2
    assert w1.get_yscale() == "linear" and modes.get_ylabel() == "modes covered"
    assert list(figures[0].axes[4].get_lines()[0].get_ydata()) == [100 * r["high_quality"] for r in rows]
    rows[3]["critic_w"] = -1e-5  # an estimate below 0 cannot go on a log axis
    P.plot_curves(str(tmp_path / "curves.png"), rows)
    assert figures[1].axes[0].get_yscale() == "symlog"


@pytest.mark.slow
def test_tensorboard_scalars_match_metrics(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = T.run(_cfg(tmp_path, iterations=20), progress=False, quiet=True)
    acc = EventAccumulator(os.path.join(res.out, "tb"))
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("wgan/w1")]
    expected = [(int(r["gen_iter"]), float(r["w1"])) for r in _rows(res.out)]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    for (_, a), (_, b) in zip(logged, expected):
        assert a == pytest.approx(b, rel=1e-6)
    assert len(acc.Images("samples")) == len(expected)


@pytest.mark.slow
def test_exact_w1_in_metrics_is_recomputable(tmp_path) -> None:
    """The logged W1 is the exact W1 between G(fixed noise) and the fixed real set."""
    from wgan_ext import metrics as M
    from wgan_ext.networks import MLPGenerator

    res = T.run(_cfg(tmp_path, iterations=10), progress=False, quiet=True)
    cfg = T.TrainConfig(**json.load(open(os.path.join(res.out, "config.json"))))
    G = MLPGenerator(encoding_dims=cfg.encoding_dims, out_shape=(2,), hidden=cfg.generator_hidden, n_hidden=cfg.n_hidden)
    G.load_state_dict(read_checkpoint(res.out)["models"]["generator"])
    real = D.eval_real(D.make_source("8gaussians"), cfg.eval_samples, cfg.seed)
    z = torch.randn(len(real), cfg.encoding_dims, generator=torch.Generator().manual_seed(cfg.seed + 0x5EED))
    with torch.no_grad():
        w1 = M.exact_w1(G(z), real)
    assert float(_rows(res.out)[-1]["w1"]) == pytest.approx(w1, rel=1e-9)


@pytest.mark.slow
def test_paper_schedule_runs_100_critic_updates_first(tmp_path) -> None:
    res = T.run(_cfg(tmp_path, iterations=3, log_every=1, schedule="paper"), progress=False, quiet=True)
    assert [int(r["critic_iter"]) for r in _rows(res.out)] == [0, 100, 200, 300]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["gp", "hinge"])
def test_other_losses(tmp_path, loss) -> None:
    res = T.run(_cfg(tmp_path, loss=loss, iterations=4, log_every=2), progress=False, quiet=True)
    ck = read_checkpoint(res.out)
    biggest = max(v.abs().max().item() for v in ck["models"]["discriminator"].values())
    if loss == "gp":  # no clipping: the default init (|w| up to 1/sqrt(16)) stays outside [-0.01, 0.01]
        assert biggest > 0.01
        assert ck["config"]["optimizer"] == "adam"
    else:  # hinge clips like labml.ai's annotated WGAN
        assert biggest <= 0.01
    assert [int(r["gen_iter"]) for r in _rows(res.out)] == [0, 2, 4]


def test_digits_run_writes_image_grids_and_digit_scores(tmp_path) -> None:
    """A digits run scores every evaluation with the digit FD (and its floor), KID, classes covered
    and the confident fraction, in metrics.csv, summary.json and curves.png."""
    from PIL import Image

    from wgan_ext import image_scores as S
    from wgan_ext import plots as P

    res = T.run(_cfg(tmp_path, dataset="digits", iterations=4, log_every=1, batch_size=16), progress=False, quiet=True)
    with Image.open(os.path.join(res.out, "samples", "step_000002.png")) as im:
        # 64 samples of 8x8 upscaled 4x to 32x32, 8 per row with 2-pixel padding
        assert im.size == (8 * 34 + 2, 8 * 34 + 2)
    rows = _rows(res.out)
    assert len(rows) == 5 and rows[-1]["modes"] == "" and float(rows[-1]["w1"]) > 0  # pixel-space W1, no modes
    pool = D.eval_real(D.make_source("digits"), 128, 1)
    floor = S.digit_fd(pool[:64], pool[64:])
    for r in rows:
        assert float(r["fd_floor"]) == pytest.approx(floor, rel=1e-5)
        assert float(r["fd"]) > float(r["fd_floor"])  # an untrained generator is far from the data
        assert 0 <= int(r["classes"]) <= 10 and r["classes_total"] == "10" and 0 <= float(r["confident"]) <= 1
        assert math.isfinite(float(r["kid"])) and r["fid"] == ""
    summary = json.load(open(os.path.join(res.out, "summary.json")))
    fds = [float(r["fd"]) for r in rows]
    assert summary["final"]["fd"] == pytest.approx(fds[-1]) and summary["fd_floor"] == pytest.approx(floor, rel=1e-5)
    from wgan_ext import metrics as M

    assert summary["spearman_critic_fd"] == pytest.approx(M.spearman([float(r["critic_w"] or "nan") for r in rows], fds))
    assert summary["last_evaluations"]["classes_max"] == max(int(r["classes"]) for r in rows[1:])
    # curves.png has the FD and classes panels: the same size as a plot of these rows with them
    panels = P.plot_curves(str(tmp_path / "again.png"), [{k: float(v) if v else math.nan for k, v in r.items()}
                                                         for r in rows])
    assert panels == ["critic", "generator", "w1", "fd", "classes"]
    with Image.open(os.path.join(res.out, "curves.png")) as a, Image.open(tmp_path / "again.png") as b:
        assert a.size == b.size and a.size[1] == round(2.2 * 5 * 80)


@pytest.mark.slow
def test_image_folder_run_with_dcgan(tmp_path, capsys, monkeypatch) -> None:
    from PIL import Image

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no Inception weights there

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (20, 20), (20 * i, 255 - 20 * i, 0)).save(folder / f"{i:02d}.png")
    res = T.run(_cfg(tmp_path, dataset="folder", data_dir=str(folder), image_size=16, batch_size=4,
                     iterations=2, log_every=1, generator_hidden=None), progress=False, quiet=False)
    # Inception FID is off, said once in one line; nothing is downloaded
    notes = [line for line in capsys.readouterr().err.splitlines() if "Inception FID" in line]
    assert len(notes) == 1 and notes[0].startswith("Inception FID: off; to enable it")
    assert all(r["fid"] == "" for r in _rows(res.out))
    ck = read_checkpoint(res.out)
    assert ck["config"]["arch"] == "dcgan"
    # every critic parameter, batch-norm scales included, is clipped (as in the paper's code)
    params = {k: v for k, v in ck["models"]["discriminator"].items() if "running" not in k and "num_batches" not in k}
    assert max(v.abs().max().item() for v in params.values()) <= 0.01
    with Image.open(os.path.join(res.out, "samples", "step_000002.png")) as im:
        # the 12 evaluation samples, 16x16 shown at 32x32, 8 per row with 2-pixel padding
        assert im.size == (8 * 34 + 2, 2 * 34 + 2)


def test_building_the_digit_scorer_draws_nothing_from_the_training_rng(tmp_path, monkeypatch) -> None:
    """A digits run trains the same whether or not this process built the digit classifier
    before (its initialisation used to draw from the training RNG the first time only)."""
    from wgan_ext import digits_classifier

    kw = dict(dataset="digits", iterations=2, log_every=2, batch_size=16)
    monkeypatch.setattr(digits_classifier, "_cached", None)
    first = T.run(_cfg(tmp_path, "first", **kw), progress=False, quiet=True)
    again = T.run(_cfg(tmp_path, "again", **kw), progress=False, quiet=True)
    same(read_checkpoint(first.out)["models"], read_checkpoint(again.out)["models"], "models")


@pytest.mark.parametrize("dataset", ["8gaussians", "digits"])
def test_period_scores_are_the_means_of_the_scores_taken_in_the_period(tmp_path, monkeypatch, dataset) -> None:
    """With --score-every 2 and --log-every 4, a row's ``w1_period`` (``fd_period``) is the mean of
    the scores of generator iterations 2 and 4 of its period: those a run evaluating every 2
    iterations logs (scoring never touches training: both runs end with the same weights, also
    when only the first builds the digit classifier). The summary's Spearman takes the critic's
    period-mean estimate against them."""
    from wgan_ext import digits_classifier
    from wgan_ext import metrics as M

    monkeypatch.setattr(digits_classifier, "_cached", None)  # built (its init drawn) in the first run only
    kw = dict(dataset=dataset, iterations=12, batch_size=16)
    probed = T.run(_cfg(tmp_path, "probed", log_every=4, score_every=2, **kw), progress=False, quiet=True)
    every = T.run(_cfg(tmp_path, "every", log_every=2, **kw), progress=False, quiet=True)
    same(read_checkpoint(probed.out)["models"], read_checkpoint(every.out)["models"], "models")
    rows, fine = _rows(probed.out), {r["gen_iter"]: r for r in _rows(every.out)}
    keys = ["w1"] + (["fd"] if dataset == "digits" else [])
    for key in keys:
        assert float(rows[0][f"{key}_period"]) == float(rows[0][key])  # iteration 0: itself
        for r in rows[1:]:
            g = int(r["gen_iter"])
            want = (float(fine[str(g - 2)][key]) + float(fine[str(g)][key])) / 2
            assert float(r[f"{key}_period"]) == pytest.approx(want, rel=1e-12)
            assert float(r[key]) == float(fine[str(g)][key])  # the evaluation's own score is unchanged
    critic = [float(r["critic_w"] or "nan") for r in rows]
    for key in keys:
        period = [float(r[f"{key}_period"]) for r in rows]
        assert probed.summary[f"spearman_critic_{key}"] == pytest.approx(M.spearman(critic, period))
        assert probed.summary[f"spearman_critic_{key}_at_evaluations"] == pytest.approx(
            M.spearman(critic, [float(r[key]) for r in rows]))


# ----------------------------------------------------------------------------- interrupt and resume


@pytest.mark.parametrize("stop_at", [73, pytest.param(51, marks=pytest.mark.slow)])  # mid-period, and on the
# batch that ends a period
def test_ctrl_c_then_resume_is_bit_identical(tmp_path, stop_at) -> None:
    """Also the period's scores so far (--score-every 3: at 73 batches, generator iteration 14, the
    checkpoint holds the score of iteration 12)."""
    full = T.run(_cfg(tmp_path, "full", score_every=3), progress=False, quiet=True)

    def ctrl_c(run) -> None:
        if run.stream.position == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the run's handler

    cut = T.run(_cfg(tmp_path, "cut", score_every=3), progress=False, quiet=True, on_batch=ctrl_c)
    assert cut.interrupted
    saved = read_checkpoint(cut.out)
    assert saved["loop"]["stream_position"] == stop_at
    assert saved["loop"]["period_stats"]["score_counts"] == ({"w1": 1} if stop_at == 73 else {})
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    resumed = T.run(T.TrainConfig(out=cut.out), resume=True, progress=False, quiet=True)
    assert not resumed.interrupted
    assert_continued_exactly(read_checkpoint(full.out), read_checkpoint(cut.out))
    assert [r["gen_iter"] for r in _rows(cut.out)] == ["0", "10", "20", "30"]


@pytest.mark.slow
def test_resume_can_extend_a_finished_run(tmp_path) -> None:
    T.run(_cfg(tmp_path, "long", iterations=20, lr_decay="none"), progress=False, quiet=True)
    short = T.run(_cfg(tmp_path, "short", iterations=10, lr_decay="none"), progress=False, quiet=True)
    T.run(T.TrainConfig(out=short.out), resume=True, explicit={"iterations": 20}, progress=False, quiet=True)
    same(read_checkpoint(os.path.join(tmp_path, "long"))["models"], read_checkpoint(short.out)["models"], "models")


def _lr_log(log):
    """An ``on_batch`` hook recording both optimizers' lr for each generator iteration to come."""
    def record(run) -> None:
        lrs = {getattr(run.trainer, n).param_groups[0]["lr"] for n in run.trainer.optimizer_names}
        assert len(lrs) == 1  # generator and critic share the schedule
        log[run.gen_updates] = lrs.pop()
    return record


def test_linear_lr_decay_follows_its_closed_form_also_when_a_run_is_extended(tmp_path) -> None:
    """Generator iteration g + 1 of T (and its critic updates) runs at lr * (1 - g / T); a finished
    run given more --iterations follows the longer ramp from where it stands."""
    log: dict = {}
    res = T.run(_cfg(tmp_path, iterations=10, log_every=5, lr_decay="linear"), progress=False, quiet=True,
                on_batch=_lr_log(log))
    lr = T.TOY_DEFAULTS["lr"]
    assert log == {g: lr * (1 - g / 10) for g in range(11)}
    assert read_checkpoint(res.out)["optimizers"]["optimizer_generator"]["param_groups"][0]["lr"] == 0.0
    log.clear()
    T.run(T.TrainConfig(out=res.out), resume=True, explicit={"iterations": 20}, progress=False, quiet=True,
          on_batch=_lr_log(log))
    assert log == {g: lr * (1 - g / 20) for g in range(10, 21)}


NEW_SETTINGS = ("lr_decay", "batchnorm", "generator_hidden", "score_every")


def test_checkpoints_from_before_lr_decay_and_batchnorm_resume_as_they_ran(tmp_path) -> None:
    """A run folder written before --lr-decay, --batchnorm, --generator-hidden and --score-every existed resumes
    with a constant lr, no batch norm and one MLP width (what it trained with), not with today's
    defaults; and scored at its evaluations only (no --score-every then)."""
    res = T.run(_cfg(tmp_path, iterations=4, log_every=2, lr_decay="none", batchnorm=False, generator_hidden=16,
                     score_every=1), progress=False, quiet=True)
    path = os.path.join(res.out, T.CHECKPOINT_NAME)
    ck = read_checkpoint(res.out)
    for key in NEW_SETTINGS:
        del ck["config"][key]
    T.save_checkpoint(path, ck)
    with open(os.path.join(res.out, T.CONFIG_NAME)) as f:
        config = json.load(f)
    with open(os.path.join(res.out, T.CONFIG_NAME), "w") as f:
        json.dump({k: v for k, v in config.items() if k not in NEW_SETTINGS}, f)
    log: dict = {}
    T.run(T.TrainConfig(out=res.out), resume=True, explicit={"iterations": 6}, progress=False, quiet=True,
          on_batch=_lr_log(log))
    assert set(log.values()) == {T.TOY_DEFAULTS["lr"]}
    resumed = read_checkpoint(res.out)["config"]
    assert (resumed["lr_decay"], resumed["batchnorm"], resumed["generator_hidden"], resumed["score_every"]) == (
        "none", False, 16, 2)


@pytest.mark.slow
def test_resume_refuses_changed_settings_and_bad_checkpoints(tmp_path) -> None:
    res = T.run(_cfg(tmp_path, iterations=2, log_every=2), progress=False, quiet=True)
    ck_path = os.path.join(res.out, T.CHECKPOINT_NAME)
    with pytest.raises(T.TrainError, match="differs from the checkpoint"):
        T.run(T.TrainConfig(out=res.out), resume=True, explicit={"lr": 1e-3})

    # a checkpoint whose networks do not match its config
    ck = torch.load(ck_path, weights_only=True)
    ck["config"]["hidden"] = 32
    T.save_checkpoint(ck_path, ck)  # with its SHA-256 record: the contents are what is checked
    with pytest.raises(T.CheckpointError, match="does not fit"):
        T.run(T.TrainConfig(out=res.out), resume=True, explicit={"iterations": 4})

    T.save_checkpoint(ck_path, {"epoch": 3})  # e.g. a torchgan checkpoint
    with pytest.raises(T.CheckpointError, match="not a wgan-ext"):
        T.run(T.TrainConfig(out=res.out), resume=True)

    with open(ck_path, "wb") as f:
        f.write(b"\x00garbage")
    before = os.listdir(res.out)
    with pytest.raises(T.CheckpointError, match="is corrupted: its SHA-256 differs"):
        T.run(T.TrainConfig(out=res.out), resume=True)
    assert os.listdir(res.out) == before and open(ck_path, "rb").read() == b"\x00garbage"


def test_atomic_checkpoint_leaves_old_file_on_failure(tmp_path) -> None:
    path = str(tmp_path / "ck.pt")
    T.save_checkpoint(path, {"a": torch.ones(2)})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        T.save_checkpoint(path, {"a": Boom()})
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["ck.pt", "ck.pt.sha256"]  # no temp file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


# ----------------------------------------------------------------------------- configuration


def test_defaults_are_algorithm1_with_the_preset_lr_and_batch() -> None:
    cfg = T.resolve_config(T.TrainConfig())
    assert (cfg.dataset, cfg.loss, cfg.c, cfg.n_critic, cfg.optimizer) == ("8gaussians", "clip", 0.01, 5, "clipped-rmsprop")
    toy = T.TOY_DEFAULTS
    assert (cfg.lr, cfg.lr_decay, cfg.batch_size, cfg.iterations) == (toy["lr"], toy["lr_decay"], toy["batch_size"], toy["iterations"])
    digits = T.resolve_config(T.TrainConfig(dataset="digits"))
    assert (digits.arch, digits.c, digits.n_critic) == ("mlp", 0.01, 5)
    assert (digits.lr, digits.lr_decay, digits.batch_size, digits.batchnorm, digits.hidden, digits.iterations) == tuple(
        DIGITS_DEFAULTS[k] for k in ("lr", "lr_decay", "batch_size", "batchnorm", "hidden", "iterations"))
    assert cfg.batchnorm is toy["batchnorm"] and (cfg.hidden, cfg.generator_hidden) == (toy["hidden"], toy["generator_hidden"])
    assert T.resolve_config(T.TrainConfig(hidden=64, dataset="digits")).generator_hidden == 64  # one width
    images = T.resolve_config(T.TrainConfig(dataset="mnist"))  # the paper's Algorithm 1 as it is
    assert (images.lr, images.lr_decay, images.batch_size, images.arch, images.image_size) == (5e-5, "none", 64, "dcgan", 32)
    assert images.batchnorm is None  # DCGAN's own
    assert (cfg.score_every, digits.score_every, images.score_every) == (
        toy["score_every"], DIGITS_DEFAULTS["score_every"], images.log_every)
    assert T.resolve_config(T.TrainConfig(log_every=40)).score_every == 40  # never longer than a period
    gp = T.resolve_config(T.TrainConfig(loss="gp"))
    assert (gp.c, gp.optimizer, gp.lr, gp.lr_decay) == (None, "adam", 1e-4, "none")


@pytest.mark.parametrize("kw, msg", [
    ({"c": 0.0}, "c must be > 0"),
    ({"c": -0.01}, "c must be > 0"),
    ({"loss": "wgan"}, "unknown loss"),
    ({"dataset": "imagenet"}, "unknown dataset"),
    ({"epochs": 2}, "use --iterations"),
    ({"dataset": "digits", "arch": "dcgan"}, "power of 2"),
    ({"loss": "gp", "optimizer": "clipped-rmsprop"}, "clips the critic's weights: give --c"),
    ({"dataset": "mnist", "batchnorm": True}, "DCGAN's networks have their own batch norm"),
    ({"dataset": "mnist", "generator_hidden": 64}, "DCGAN's networks have their own"),
    ({"lr_decay": "cosine"}, "unknown lr decay 'cosine'; choose one of none, linear"),
    ({"score_every": 0}, "score every must be >= 1, got 0"),
])
def test_bad_config(kw, msg) -> None:
    with pytest.raises(T.TrainError, match=msg):
        T.resolve_config(T.TrainConfig(**kw))


def test_epochs_convert_to_generator_iterations() -> None:
    src = D.make_source("digits")
    cfg = T.resolve_config(T.TrainConfig(dataset="digits", epochs=5), src)
    assert cfg.iterations == math.ceil(5 * (1797 // 64) / 5)


@pytest.mark.slow
def test_default_run_covers_every_mode(tmp_path) -> None:
    """The default run (8 gaussians, seed 0; about 5 minutes on 2 CPU cores) ends with all 8 modes
    covered, and the critic's estimate ranks its checkpoints as exact W1 does (issue 19's goals,
    met by seeds 0-4 in benchmarks/QUALITY.md, whose margins -- every mode well above its
    threshold -- leave room for another machine's trajectory)."""
    res = T.run(T.TrainConfig(out=str(tmp_path / "run")), progress=False, quiet=True)
    final, last = res.summary["final"], res.summary["last_evaluations"]
    assert final["modes"] == 8 and last["modes_max"] == 8
    assert res.summary["spearman_critic_w1"] >= 0.9
    assert final["w1"] < 0.2 and last["w1_mean"] < 0.2


@pytest.mark.slow
def test_digits_preset_draws_every_digit(tmp_path) -> None:
    """The digits preset (seed 0, about 2 minutes on 2 CPU cores) ends with confident samples of
    all 10 digits, a digit FD within a few times its real-vs-real floor, and the critic's estimate
    falling with the FD (the paper's Figures 3-4): seeds 0-4 in benchmarks/QUALITY.md."""
    res = T.run(T.TrainConfig(dataset="digits", out=str(tmp_path / "run")), progress=False, quiet=True)
    final, last = res.summary["final"], res.summary["last_evaluations"]
    assert final["classes"] >= 9 and last["classes_max"] == 10
    assert final["fd"] < 5 * res.summary["fd_floor"]
    # 0.88 for this seed, 0.88-0.99 over seeds 0-4 on one machine; another machine follows
    # another trajectory: the bound says the estimate falls with the FD, as the previous
    # preset's did not (-0.18 on one seed)
    assert res.summary["spearman_critic_fd"] >= 0.7
