"""Flow sampler: schedule, CFG window and renorm, Euler, noise, and step-by-step parity with the
reference trajectories of every generation task."""
from __future__ import annotations

import pytest
import torch

from lance_model.noise import comfy_noise, latent_to_rows, reference_noise, rows_to_latent
from lance_model.sampling import (FlowSettings, _linspace_one_to_zero, cfg_active, combine_cfg, euler_step,
                                  flow_timesteps, sample_flow)
from mot_cases import GEN_TASKS, gen_case, rel_l2
from parity_measures import COMBINED_REL_L2, FINAL_LATENT_REL_L2, STEP_REL_L2, teacher_forced_errors


def test_schedule_follows_the_reference_cuda_kernel():
    # torch.linspace on CUDA forms the first half as one fused multiply-add 1 + step·i (one rounding)
    # and the second half as −step·(n−1−i); CPU kernels may round differently.
    u = _linspace_one_to_zero(31)
    step = (torch.tensor(-1.0) / 30).double()
    assert all(u[i] == (1 + step * i).float() for i in range(15))
    assert all(u[i] == (-(step * (30 - i))).float() for i in range(15, 31))
    # read on an H100 from the reference expression: t_42 of 50 steps at shift 3.5 is exactly fp32(0.4)
    assert flow_timesteps(50, 3.5)[42].item() == float.fromhex("0x1.99999ap-2")


def test_schedule_values_from_the_spec():
    t = flow_timesteps(30, 3.5)
    assert t.dtype == torch.float32 and t.shape == (31,)
    assert t[0] == 1.0 and t[-1] == 0.0
    expected_head = torch.tensor([1.0, 0.9902, 0.9800, 0.9692])
    expected_tail = torch.tensor([0.35, 0.28, 0.20, 0.1077])
    assert torch.allclose(t[:4], expected_head, atol=1e-4)
    assert torch.allclose(t[26:30], expected_tail, atol=1e-4)
    assert (t[1:] < t[:-1]).all()


# 50 steps at shift 3.5 give 42, not the 43 of spec §5.2: t_42 is exactly fp32(0.4) in the reference's
# fp32 arithmetic on CUDA (counted on an H100 with the reference's own expression); the window is open
# at 0.4. (43 is what float64 arithmetic gives.)
@pytest.mark.parametrize("steps,shift,active", [(30, 3.5, 26), (50, 3.5, 42), (30, 3.0, 25), (8, 3.5, 7)])
def test_cfg_window_step_counts(steps, shift, active):
    t = flow_timesteps(steps, shift)[:-1]
    flags = [cfg_active(ti, (0.4, 1.0)) for ti in t]
    assert sum(flags) == active
    assert all(flags[:active]) and not any(flags[active:])  # guidance covers the first steps only


def test_cfg_window_bounds_are_open_below_closed_above():
    assert cfg_active(torch.tensor(1.0), (0.4, 1.0))
    assert not cfg_active(torch.tensor(0.4), (0.4, 1.0))
    assert not cfg_active(torch.tensor(1.0), (0.4, 0.9))


def _velocities():
    gen = torch.Generator().manual_seed(0)
    v_cond = torch.randn(6, 48, generator=gen).bfloat16()
    v_uncond = (v_cond.float() * 0.5 + 0.3 * torch.randn(6, 48, generator=gen)).bfloat16()
    return v_cond, v_uncond


def test_renorm_none_is_plain_guidance():
    v_cond, v_uncond = _velocities()
    v = combine_cfg(v_cond, v_uncond, 4.0, "none")
    assert v.dtype == torch.bfloat16
    assert torch.equal(v, v_uncond + 4.0 * (v_cond - v_uncond))


def test_renorm_global_caps_the_total_norm_in_bf16():
    v_cond, v_uncond = _velocities()
    plain = combine_cfg(v_cond, v_uncond, 4.0, "none")
    v = combine_cfg(v_cond, v_uncond, 4.0, "global")
    assert v.dtype == torch.bfloat16  # a 0-dim fp32 scale keeps the bf16 velocity bf16
    assert plain.float().norm() > v_cond.float().norm()
    assert abs(v.float().norm() / v_cond.float().norm() - 1) < 5e-3
    scale = v_cond.float().norm() / (plain.float().norm() + 1e-8)
    assert torch.equal(v, plain * scale)
    # never amplifies a velocity whose norm is already below the conditional one, and renorm_min sets a floor
    mild = combine_cfg(v_cond, v_uncond, 0.5, "none")
    assert mild.float().norm() < v_cond.float().norm()
    assert torch.equal(combine_cfg(v_cond, v_uncond, 0.5, "global"), mild)
    floor = combine_cfg(v_cond, v_uncond, 4.0, "global", renorm_min=0.9)
    assert torch.equal(floor, plain * torch.tensor(0.9))


def test_renorm_channel_caps_each_token_and_promotes_to_fp32():
    v_cond, v_uncond = _velocities()
    v = combine_cfg(v_cond, v_uncond, 4.0, "channel")
    assert v.dtype == torch.float32
    ratio = v.norm(dim=-1) / v_cond.float().norm(dim=-1)
    assert (ratio <= 1 + 1e-5).all() and (ratio > 0.99).any()


def test_unknown_renorm_is_refused():
    v_cond, v_uncond = _velocities()
    with pytest.raises(ValueError, match="renorm must be one of"):
        combine_cfg(v_cond, v_uncond, 4.0, "cosine")
    with pytest.raises(ValueError, match="renorm must be one of"):
        FlowSettings(renorm="cosine")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        FlowSettings(steps=0)


def test_euler_moves_only_the_listed_rows_in_bf16():
    x = torch.ones(4, 3, dtype=torch.bfloat16)
    v = torch.full((4, 3), 2.0, dtype=torch.bfloat16)
    out = euler_step(x, torch.tensor([1, 3]), v, torch.tensor(0.25))
    assert out.dtype == torch.bfloat16 and torch.equal(x, torch.ones(4, 3, dtype=torch.bfloat16))
    assert out[:, 0].tolist() == [1.0, 0.5, 1.0, 0.5]


# ---------------------------------------------------------------- noise

def test_comfy_noise_matches_comfyui_prepare_noise_draw():
    shape = (1, 48, 2, 3, 5)
    with torch.random.fork_rng():
        torch.manual_seed(123)  # ComfyUI seeds the global CPU generator and draws the LATENT's shape
        expected = torch.randn(shape)
    rows = comfy_noise(shape, 123)
    assert rows.shape == (1, 30, 48) and rows.dtype == torch.bfloat16
    assert torch.equal(rows, latent_to_rows(expected).bfloat16())
    assert torch.equal(comfy_noise(shape, 123), rows) and not torch.equal(comfy_noise(shape, 124), rows)
    assert torch.equal(rows_to_latent(latent_to_rows(expected), 2, 3, 5), expected)


@pytest.mark.parametrize("task", ["t2i", "image_edit"])
def test_reference_noise_reproduces_the_fixture_draw(golden_dir, task):
    case = gen_case(str(golden_dir), task)
    stored = case.tensors["gen.noise_randn"]
    n_target = case.x_initial.shape[0]
    noise = reference_noise(stored.shape[0], n_target, seed=42, device="cpu")
    assert noise.dtype == torch.bfloat16 and torch.equal(noise, stored[-n_target:])


def test_reference_noise_rejects_bad_row_counts():
    with pytest.raises(ValueError, match="target tokens"):
        reference_noise(10, 11, seed=0, device="cpu")


# ---------------------------------------------------------------- parity with the reference trajectories

@pytest.mark.parametrize("task", GEN_TASKS)
def test_timesteps_exact(golden_dir, task):
    case = gen_case(str(golden_dir), task)
    assert torch.equal(flow_timesteps(case.settings.steps, case.settings.shift), case.tensors["gen.timesteps"])


@pytest.mark.parametrize("task", GEN_TASKS)
def test_teacher_forced_steps(golden_dir, task):
    case = gen_case(str(golden_dir), task)
    errors = teacher_forced_errors(case)
    assert [e.step for e in errors] == list(range(case.settings.steps))
    for e in errors:
        assert e.cond <= STEP_REL_L2, f"step {e.step} cond"
        # the CFG window is the reference's: uncond is None exactly where neither side guides
        assert (e.uncond is None) == (f"gen.v_uncond_{e.step:02d}" not in case.tensors), f"step {e.step} window"
        assert e.uncond is None or e.uncond <= STEP_REL_L2, f"step {e.step} uncond"
        assert e.combined <= COMBINED_REL_L2, f"step {e.step} combined"


@pytest.mark.parametrize("task", GEN_TASKS)
def test_free_running_final_latent(golden_dir, task):
    case = gen_case(str(golden_dir), task)
    seen = []
    x = sample_flow(case.decoder, case.block, case.x_initial, case.updated_rows, case.cond, case.uncond,
                    case.settings, callback=lambda step, x, v: seen.append(step))
    finals = sorted(k for k in case.tensors if k.startswith("gen.final_latent_"))
    expected = case.tensors[finals[-1]]  # the target (edit stores the source first)
    assert seen == list(range(case.settings.steps))
    assert x.dtype == torch.bfloat16
    assert rel_l2(x, expected.reshape(-1, expected.shape[-1])) <= FINAL_LATENT_REL_L2[task]
    fixed = torch.ones(x.shape[0], dtype=torch.bool)
    fixed[case.updated_rows] = False
    assert torch.equal(x[fixed], case.x_initial[fixed])  # i2v's clean first frame never moves
