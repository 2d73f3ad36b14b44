"""The flow-matching trainer, the AMG objective, EMA, bad-model recipes and the v2a-train CLI (tiny configs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from v2a_sampler import sample
from v2a_sampler.models import from_pretrained
from v2a_sampler.training import EMA, TrainConfig, evaluate_loss, flow_matching_loss, list_checkpoints, train
from v2a_sampler.training.bad import earlier_checkpoint, finetune, train_reduced
from v2a_sampler.training.cli import main
from v2a_sampler.training.ema import power_gamma, power_std
from v2a_sampler.training.objectives import (
    amg_target,
    amg_weight_at,
    drop_groups,
    drop_masks,
    noisy_state,
    sample_noise_level,
)

TINY = TrainConfig(
    arch="mlp",
    arch_kwargs={"hidden_dim": 16, "num_layers": 2},
    data="toy2d",
    iterations=40,
    batch_size=256,
    lr=3e-3,
    t_mean=-1.0,
    t_std=1.2,
    ema_std=0.1,
    log_every=10,
    seed=3,
)


@pytest.fixture(scope="module")
def toy_data():
    from v2a_sampler.lab.toy2d import make_toy2d

    return make_toy2d().data_source()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One run of 120 iterations with checkpoints after 10 and 120 (shared by several tests)."""
    out = tmp_path_factory.mktemp("run")
    cfg = TINY.replace(iterations=120, checkpoint_at=[10])
    return train(cfg, out, progress=False), out


def test_trainer_reduces_loss_on_toy(short_run, toy_data):
    result, _ = short_run
    fresh = TINY.replace(iterations=1)
    torch.manual_seed(fresh.seed)
    from v2a_sampler.models import build

    init = build(fresh.arch, fresh.arch_kwargs)
    before = evaluate_loss(init, toy_data, num_samples=8192)
    after = evaluate_loss(result.denoiser, toy_data, num_samples=8192)
    assert after < 0.8 * before, (before, after)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert [h["iteration"] for h in result.history] == list(range(10, 121, 10))


def test_earlier_checkpoint_is_worse(short_run, toy_data, tmp_path):
    result, out = short_run
    assert sorted(list_checkpoints(out)) == [10, 120]
    early = earlier_checkpoint(out, 10, out=tmp_path / "bad")
    final = from_pretrained(out / "iter-000120")
    assert early.config["training"]["iteration"] == 10 and final.config["training"]["iteration"] == 120
    assert (tmp_path / "bad" / "model.safetensors").is_file()
    for drop in (False, True):  # conditional and unconditional branches
        loss_early = evaluate_loss(early, toy_data, num_samples=8192, drop=drop)
        loss_final = evaluate_loss(final, toy_data, num_samples=8192, drop=drop)
        assert loss_early > 1.1 * loss_final, (drop, loss_early, loss_final)
    with pytest.raises(ValueError, match="no checkpoint at iteration 11; saved iterations: 10, 120"):
        earlier_checkpoint(out, 11)


def test_resume_is_bit_identical(tmp_path):
    cfg = TINY.replace(iterations=12, checkpoint_at=[6], amg_weight=0.3, amg_warmup=4, amg_ramp=4)
    straight = train(cfg, tmp_path / "a", progress=False)
    train(cfg.replace(iterations=6, checkpoint_at=[]), tmp_path / "b", progress=False)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert straight.history[-1]["iteration"] == resumed.history[-1]["iteration"] == 12
    with pytest.raises(ValueError, match="config differs in \\['lr'\\]"):
        train(cfg.replace(iterations=20, lr=1.0), tmp_path / "b", resume=True, progress=False)


def test_amg_target_is_computed_as_defined():
    torch.manual_seed(0)
    from v2a_sampler.models import build

    model = build("mlp", {"hidden_dim": 8, "num_layers": 1})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    n, w = 64, 0.4
    x0 = torch.randn(n, 2, generator=g)
    eps = torch.randn(n, 2, generator=g)
    t = torch.rand(n, generator=g)
    cond = {"label": torch.randint(2, (n,), generator=g)}
    masks = {"label": torch.arange(n) % 4 == 0}  # every 4th row drops its label
    out = flow_matching_loss(model, x0, cond, eps, t, masks, amg_weight=w)

    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps  # noise at t = 1
    u = eps - x0  # the flow velocity d x_t / d t
    with torch.no_grad():
        u_c, u_null = model(x_t, t, cond), model(x_t, t, None)
    keep = ~masks["label"]
    expected = u.clone()
    expected[keep] = u[keep] + w * (u_c[keep] - u_null[keep])
    assert torch.allclose(out.x_t, x_t, atol=1e-6)
    assert torch.allclose(out.target, expected, atol=1e-5)
    assert not torch.allclose(expected[keep], u[keep], atol=1e-3)  # the AMG term is not trivially zero

    # stop-gradient: the gradient is that of an MSE against a constant target
    model.zero_grad()
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    pred = torch.where(keep[:, None], model(x_t, t, cond), model(x_t, t, None))
    (pred - expected).square().mean().backward()
    for a, b in zip(grads, [p.grad for p in model.parameters()], strict=True):
        assert torch.allclose(a, b, atol=1e-6)

    # the helper on its own
    a, c, d = torch.ones(3), torch.full((3,), 2.0, requires_grad=True), torch.zeros(3)
    tgt = amg_target(a, c, d, 0.25)
    assert torch.equal(tgt, torch.full((3,), 1.5)) and not tgt.requires_grad


def test_amg_warmup_schedule():
    assert [amg_weight_at(i, 0.5, warmup=4, ramp=4) for i in range(10)] == [
        0,
        0,
        0,
        0,
        0.125,
        0.25,
        0.375,
        0.5,
        0.5,
        0.5,
    ]
    assert amg_weight_at(0, 0.5) == 0.5 and amg_weight_at(100, None, 0, 0) == 0.0
    cfg = TrainConfig(iterations=100, amg_weight=0.6)
    assert cfg.amg_schedule == (25, 25)
    assert cfg.amg_weight_at(24) == 0.0 and cfg.amg_weight_at(49) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="amg_weight must be < 1"):
        TrainConfig(amg_weight=1.0)


def test_amg_model_declares_weight_and_gets_amg_guidance(tmp_path):
    cfg = TINY.replace(iterations=16, amg_weight=0.5, amg_warmup=4, amg_ramp=4, checkpoint_at=[4])
    result = train(cfg, tmp_path, progress=False)
    assert result.denoiser.amg_weight == 0.5
    assert from_pretrained(tmp_path / "iter-000004").amg_weight is None  # still in warm-up when saved
    model = from_pretrained(tmp_path / "iter-000016")
    assert model.amg_weight == 0.5 and model.config["amg_weight"] == 0.5
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    _, info = sample(model, noise, cond={"label": torch.zeros(8, dtype=torch.long)}, steps=3)
    assert info.guidance == {"type": "cfg", "w": 1.45}  # MGAudio's small extra CFG for AMG models
    assert info.effective_strength == pytest.approx(1.45 / (1 - 0.5))


def test_condition_dropout_per_condition_and_together():
    g = torch.Generator().manual_seed(0)
    n = 40000
    m = drop_masks(n, ("video", "text"), {"video": 0.3}, p_drop_all=0.2, generator=g)
    video, text = m["video"].double().mean(), m["text"].double().mean()
    both = (m["video"] & m["text"]).double().mean()
    assert video == pytest.approx(0.2 + 0.8 * 0.3, abs=0.01)
    assert text == pytest.approx(0.2, abs=0.01) and both == pytest.approx(0.2, abs=0.01)
    groups = drop_groups(m, n)
    assert sum(len(i) for i, _ in groups) == n
    assert {d for _, d in groups} == {frozenset(), frozenset({"video"}), frozenset({"video", "text"})}
    for idx, dropped in groups:
        assert all(bool(m[k][idx].all()) == (k in dropped) for k in m)
    with pytest.raises(ValueError, match="unknown condition"):
        drop_masks(4, ("video",), {"audio": 0.1})


def test_noise_level_sampling_and_noisy_state():
    g = torch.Generator().manual_seed(0)
    lv = sample_noise_level(50000, "logit_normal", -1.2, 0.5, generator=g)
    logit = torch.log(lv / (1 - lv))  # = log(sigma / alpha): EDM's log-normal noise distribution
    assert logit.mean() == pytest.approx(-1.2, abs=0.02) and logit.std() == pytest.approx(0.5, abs=0.02)
    un = sample_noise_level(50000, "uniform", generator=g)
    assert un.mean() == pytest.approx(0.5, abs=0.01) and 0 < un.min() and un.max() < 1
    with pytest.raises(ValueError, match="unknown t sampling"):
        sample_noise_level(4, "cosine")
    from v2a_sampler.denoisers import FlowSchedule

    x0, eps, t = torch.ones(3, 2), torch.zeros(3, 2), torch.tensor([0.0, 0.25, 1.0])
    x_t, terms = noisy_state(FlowSchedule(0.0), x0, eps, t)  # MMAudio convention: data at t = 1
    assert torch.allclose(x_t[:, 0], t) and torch.allclose(terms.d_sigma, -torch.ones(3, 1))


def test_ema_profiles():
    for std in (0.01, 0.05, 0.2):
        assert power_std(power_gamma(std)) == pytest.approx(std, rel=1e-9)
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, std=0.05)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, 1)  # first step: the average is the model itself
    assert torch.equal(ema.module.weight, net.weight)
    const = EMA(net, decay=0.9)
    before = const.module.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    const.update(net, 5)
    assert torch.allclose(const.module.weight, 0.9 * before + 0.1 * net.weight)
    with pytest.raises(ValueError, match="exactly one"):
        EMA(net)


def test_gradient_clipping_limits_updates():
    cfg = TINY.replace(iterations=1, ema_std=None, lr=1e-2)
    torch.manual_seed(cfg.seed)
    from v2a_sampler.models import build

    init = {k: v.clone() for k, v in build(cfg.arch, cfg.arch_kwargs).state_dict().items()}

    def moved(result):
        return max(float((v - init[k]).abs().max()) for k, v in result.model.state_dict().items())

    assert moved(train(cfg.replace(max_grad_norm=None), progress=False)) > 1e-3
    assert moved(train(cfg.replace(max_grad_norm=1e-12), progress=False)) < 1e-5


def test_reduced_capacity_and_finetune(short_run, tmp_path, toy_data):
    _, out = short_run
    small = train_reduced(out, tmp_path / "small", iterations=20, arch_overrides={"hidden_dim": 8}, progress=False)
    assert small.denoiser.arch_kwargs["hidden_dim"] == 8 and small.config.iterations == 20
    assert small.config.checkpoint_at == [10] and sorted(small.checkpoints) == [10, 20]
    assert small.config.t_mean == TINY.t_mean  # same recipe otherwise
    with pytest.raises(ValueError, match="needs arch_overrides"):
        train_reduced(TINY)

    base = out / "iter-000120"
    ft = finetune(base, tmp_path / "ft", iterations=5, lr=1e-4, progress=False)
    assert ft.config.init_from == str(base) and ft.config.lr == 1e-4 and sorted(ft.checkpoints) == [5]
    tuned = from_pretrained(tmp_path / "ft" / "iter-000005")
    start = from_pretrained(base)
    pairs = zip(tuned.state_dict().values(), start.state_dict().values(), strict=True)
    diff = max(float((a - b).abs().max()) for a, b in pairs)
    assert 0 < diff < 0.05  # continued from the base weights, moved a little
    assert evaluate_loss(tuned, toy_data, num_samples=4096) < 1.1 * evaluate_loss(start, toy_data, num_samples=4096)


def test_config_round_trip_and_validation():
    cfg = TINY.replace(p_drop={"label": 0.2}, checkpoint_at=[30, 10, 10])
    assert cfg.checkpoint_at == [10, 30]
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"iters": 3})
    with pytest.raises(ValueError, match="outside 1..40"):
        TINY.replace(checkpoint_at=[41])
    assert TrainConfig(lr=1.0, lr_warmup=4, lr_decay_start=10).lr_at(1) == 0.5
    assert TrainConfig(lr=1.0, lr_decay_start=10).lr_at(40) == 0.5


def test_cli_fit_earlier_show(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["fit", "--iters", "6", "--batch", "64", "--arch-kw", "hidden_dim=8", "--checkpoint-at", "3"]
    assert main([*args, "--set", "ema_std=null", "--out", str(run), "--no-progress"]) == 0
    assert sorted(list_checkpoints(run)) == [3, 6]
    saved = from_pretrained(run / "iter-000006")
    assert saved.arch_kwargs["hidden_dim"] == 8 and saved.config["training"]["weights"] == "raw"
    assert main(["earlier", "--run", str(run), "--iter", "3", "--out", str(tmp_path / "bad")]) == 0
    assert from_pretrained(tmp_path / "bad").config["training"]["iteration"] == 3
    capsys.readouterr()
    assert main(["earlier", "--run", str(run), "--iter", "4", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("v2a-train: error: ") and err.count("\n") == 1
    # the module entry point, in a fresh interpreter
    done = subprocess.run(
        [sys.executable, "-m", "v2a_sampler.training", "show", str(run / "iter-000003")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["training"]["iteration"] == 3
