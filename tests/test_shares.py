"""The DPH / KL share of each update (shares.py): exact on hand-made gradients, split so that the two
parts add up to the step AdamW takes, logged by every DPH and RKL run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dphrl_mini.shares import UpdateShares, clip_coefficient
from tests.test_trainer import tiny_config
from dphrl_mini.trainer import Trainer

torch.set_num_threads(1)

SHARE_FIELDS = ("dph_grad_share", "dph_update_share", "dph_grad_cosine", "reference_drift", "reference_halved_frac")


def one_update(param, optimizer, shares, rl_grad, dph_grad, clip=1.0) -> dict:
    """Backward of a loss whose gradient is ``rl_grad`` and, as term "dph", ``dph_grad`` (both scaled by ``clip``)."""
    optimizer.zero_grad(set_to_none=True)
    shares.zero()
    param.grad = clip * rl_grad.clone()
    with shares.term("dph"):
        param.grad += clip * dph_grad
    return shares.measure(clip)


def test_shares_and_cosine_of_known_gradients():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=0.1, weight_decay=0.0)
    shares = UpdateShares([param], optimizer)
    rl, dph = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])  # norms 5 and 1, orthogonal
    metrics = one_update(param, optimizer, shares, rl, dph)
    assert metrics["dph_grad_share"] == pytest.approx(1 / 6)
    assert metrics["dph_grad_cosine"] == pytest.approx(0.0)
    # first AdamW step: m_hat = g, v_hat = g^2, so each coordinate moves lr * g_part / (|g| + eps)
    # coordinates 0 and 2 belong to RL alone (steps of 0.1 each), coordinate 1 to DPH alone (0.1)
    assert metrics["dph_update_share"] == pytest.approx(0.1 / (0.1 + 0.1 * math.sqrt(2)), rel=1e-6)
    metrics = one_update(param, optimizer, shares, rl, -rl / 5)  # opposed, a fifth as large
    assert metrics["dph_grad_share"] == pytest.approx(1 / 6)
    assert metrics["dph_grad_cosine"] == pytest.approx(-1.0)


def test_update_parts_add_up_to_adamw_step_with_clipping():
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(50))
    optimizer = torch.optim.AdamW([param], lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0)
    shares = UpdateShares([param], optimizer)
    for step in range(5):
        rl, dph = torch.randn(50), 0.3 * torch.randn(50)
        clip = clip_coefficient(float((rl + dph).norm()), max_norm=1.0)
        assert clip < 1
        before = param.detach().clone()
        one_update(param, optimizer, shares, rl, dph, clip)
        optimizer.step()
        # the split moments reproduce AdamW's own step exactly: D_rl + D_dph = the applied update
        bias1, bias2 = 1 - 0.8 ** (step + 1), 1 - 0.95 ** (step + 1)
        denom = (shares.second_moment[0] / bias2).sqrt() + 1e-6
        total = 0.01 * shares.first_moment["total"][0] / bias1 / denom
        torch.testing.assert_close(before - param.detach(), total, rtol=1e-4, atol=1e-7)
        dph_part = 0.01 * shares.first_moment["dph"][0] / bias1 / denom
        assert float(dph_part.norm()) < float((total - dph_part).norm())  # the smaller stream moves less


@pytest.mark.slow
def test_dph_run_logs_shares_and_eta_moves_them(tmp_path):
    means = {}
    for eta in (0.00125, 0.3):
        config = tiny_config(tmp_path / str(eta), method="dph_js", eta=eta, steps=4, lr=2e-3)
        history = Trainer(config).train()
        for metrics in history:
            for field in SHARE_FIELDS:
                assert field in metrics and math.isfinite(metrics[field]), (eta, field)
            assert 0 <= metrics["dph_update_share"] <= 1 and 0 <= metrics["reference_halved_frac"] <= 1
        means[eta] = np.mean([m["dph_update_share"] for m in history])
    assert means[0.3] > 10 * means[0.00125]


def test_rkl_logs_kl_shares_and_measuring_keeps_the_update(tmp_path):
    runs = {}
    for measure in (True, False):
        config = tiny_config(tmp_path / str(measure), method="rkl", kl_coef=0.5, steps=2, measure_shares=measure)
        trainer = Trainer(config)
        runs[measure] = (trainer.train(), {n: p.detach().clone() for n, p in trainer.policy.named_parameters()
                                           if p.requires_grad})
    for metrics in runs[True][0]:
        assert 0 < metrics["kl_grad_share"] < 1 and 0 <= metrics["kl_update_share"] <= 1
    assert "kl_grad_share" not in runs[False][0][0]
    for name, weight in runs[True][1].items():  # two backward passes instead of one: the same update
        torch.testing.assert_close(weight, runs[False][1][name], rtol=1e-4, atol=3e-5)


def test_share_sweep_figure_places_each_variant_at_its_logged_share(tmp_path):
    import json

    from dphrl_mini.plots import mean_update_share, plot_share_sweep

    shares = {"dph_js_eta0.01": 0.02, "dph_js_eta1": 0.3, "rkl_kl_coef0.05": 0.1}
    rows = []
    for seed in (0, 1):
        for method, score in {"base": 0.3, "grpo": 0.4, **shares}.items():
            rows.append({"method": method, "seed": seed, "split": "test", "pass@1": score, "pass@64": 1 - score})
            folder = tmp_path / method / f"seed{seed}"
            folder.mkdir(parents=True)
            key = "kl_update_share" if method.startswith("rkl") else "dph_update_share"
            lines = [{"step": 1, "reward_mean": 0.0}] + ([{"step": s, key: shares[method] * s / 2} for s in (1, 3)]
                                                        if method in shares else [])
            (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    assert mean_update_share(tmp_path / "dph_js_eta1" / "seed0") == pytest.approx(0.3)
    assert mean_update_share(tmp_path / "grpo" / "seed0") is None
    fig = plot_share_sweep(rows, tmp_path)
    left = fig.axes[0]
    lines = {line.get_label(): line for line in left.get_lines()}
    np.testing.assert_allclose(lines["DPH-JS"].get_xdata(), [2.0, 30.0])  # in %, sorted by share
    np.testing.assert_allclose(lines["RKL"].get_xdata(), [10.0])
    assert left.get_xscale() == "log" and len(left.get_lines()) == 4  # base, GRPO, the two sweeps
