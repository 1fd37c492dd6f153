"""Tests of the pure helpers of the generation pipeline (sampler, guidance, image, masks, colour, video).

The expected values are computed independently here from the formulas (not by calling the code
under test a second way), on small tensors, so the whole file runs in a few seconds on a CPU.
"""

import math
import os
import subprocess

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_multitalk.pipelines.color_correction import lab_to_rgb, match_color_lab, rgb_to_lab
from diffusers_multitalk.pipelines.guidance import (
    APGState,
    MomentumBuffer,
    adaptive_projected_guidance,
    combine_guidance,
    combine_guidance_two_pass,
)
from diffusers_multitalk.pipelines.image_processing import (
    ASPECT_RATIO_627,
    ASPECT_RATIO_960,
    center_crop_offsets,
    closest_bucket,
    load_image_any,
    preprocess_image,
    resize_and_center_crop,
    resolution_buckets,
)
from diffusers_multitalk.pipelines.person_masks import (
    default_person_masks,
    latent_person_masks,
    person_masks_from_bboxes,
)
from diffusers_multitalk.pipelines.sampling import (
    add_noise_flow,
    make_multitalk_scheduler,
    multitalk_sigmas,
    multitalk_timesteps,
    set_multitalk_timesteps,
)
from diffusers_multitalk.pipelines.video_io import (
    export_to_video,
    export_to_video_with_audio,
    get_ffmpeg_exe,
)


# ---------------------------------------------------------------------------------------------------
# 1. sampler
# ---------------------------------------------------------------------------------------------------


def _hand_sigmas(steps, shift):
    ts = [1000 - i * (1000 - 1) / (steps - 1) for i in range(steps)] if steps > 1 else [1000.0]
    ts.append(0.0)
    out = []
    for t in ts:
        s = t / 1000
        out.append(shift * s / (1 + (shift - 1) * s))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("steps,shift", [(40, 7.0), (10, 11.0), (5, 1.0), (1, 5.0)])
def test_sigmas_follow_formula(steps, shift):
    sig = multitalk_sigmas(steps, shift)
    assert sig.dtype == torch.float32 and sig.shape == (steps + 1,)
    torch.testing.assert_close(sig.double(), _hand_sigmas(steps, shift), rtol=1e-6, atol=1e-7)
    assert sig[0].item() == 1.0 and sig[-1].item() == 0.0
    assert torch.all(sig[1:] < sig[:-1])
    torch.testing.assert_close(multitalk_timesteps(steps, shift), sig * 1000, rtol=1e-6, atol=1e-4)


def test_sampler_rejects_bad_args():
    with pytest.raises(ValueError):
        multitalk_sigmas(0, 5.0)
    with pytest.raises(ValueError):
        multitalk_sigmas(10, 0.0)


def test_scheduler_timesteps_and_sigmas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # a scheduler saved with another shift is fine: set_multitalk_timesteps neutralises it
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ts = set_multitalk_timesteps(sched, 8, 7.0)
    sig = multitalk_sigmas(8, 7.0)
    assert torch.equal(sched.sigmas, sig)
    assert torch.equal(ts, sched.timesteps)
    assert torch.equal(sched.timesteps, multitalk_timesteps(8, 7.0)[:-1])  # the original's exact values
    torch.testing.assert_close(sched.timesteps, sig[:-1] * 1000, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(sched.timesteps.double(), _hand_sigmas(8, 7.0)[:-1] * 1000, rtol=1e-6, atol=1e-4)


def test_scheduler_rejects_incompatible_config():
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ValueError, match="use_karras_sigmas"):
        set_multitalk_timesteps(FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), 4, 5.0)
    with pytest.raises(TypeError):
        set_multitalk_timesteps(object(), 4, 5.0)


def test_scheduler_euler_step_matches_hand_computation():
    steps, shift = 6, 7.0
    sched = make_multitalk_scheduler(shift=shift, num_inference_steps=steps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 4, 4, generator=gen)
    sig = _hand_sigmas(steps, shift)
    t_ref = multitalk_timesteps(steps, shift)
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(16, 3, 4, 4, generator=gen)
        prev = sched.step(v, t, x).prev_sample
        # diffusers form and the original's form x - v * (t_i - t_{i+1}) / 1000
        expected = (x.double() + (sig[i + 1] - sig[i]) * v.double()).float()
        original = x - v * ((t_ref[i] - t_ref[i + 1]) / 1000)
        torch.testing.assert_close(prev, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prev, original, rtol=1e-5, atol=1e-5)
        x = prev


def test_noising_matches_scale_noise_and_original():
    steps, shift = 5, 7.0
    sched = make_multitalk_scheduler(shift=shift, num_inference_steps=steps)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 16, 2, 3, 3, generator=gen)
    noise = torch.randn(2, 16, 2, 3, 3, generator=gen)
    sig = multitalk_sigmas(steps, shift)
    for i, t in enumerate(sched.timesteps):
        expected = (1 - sig[i]) * x0 + sig[i] * noise  # the original's add_noise with t / 1000
        got = sched.scale_noise(x0, t.reshape(1).expand(2), noise)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(add_noise_flow(x0, noise, sig[i]), expected, rtol=0, atol=0)
        torch.testing.assert_close(add_noise_flow(x0, noise, float(sig[i])), expected, rtol=0, atol=1e-6)
    # per-sample sigma and the terminal 0 (which scale_noise cannot look up)
    s = torch.tensor([0.25, 0.75])
    got = add_noise_flow(x0, noise, s)
    torch.testing.assert_close(got[1], 0.25 * x0[1] + 0.75 * noise[1])
    assert torch.equal(add_noise_flow(x0, noise, 0.0), x0)


# ---------------------------------------------------------------------------------------------------
# 2. guidance
# ---------------------------------------------------------------------------------------------------


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _hand_apg(diff, cond, eta, threshold):
    """APG of one (already momentum-averaged) difference, per sample over the last 4 dims."""
    lead = diff.shape[:-4]
    d = diff.reshape(*lead, -1)
    c = cond.reshape(*lead, -1)
    norm = torch.sqrt((d * d).sum(-1, keepdim=True))
    if threshold > 0:
        d = d * torch.where(norm > threshold, threshold / norm, torch.ones_like(norm))
    unit = c / torch.sqrt((c * c).sum(-1, keepdim=True))
    par = (d * unit).sum(-1, keepdim=True) * unit
    return (d - par + eta * par).reshape(diff.shape)


def test_vanilla_three_pass_guidance():
    cond, drop_text, uncond = _rand(4, 2, 3, 3, seed=1), _rand(4, 2, 3, 3, seed=2), _rand(4, 2, 3, 3, seed=3)
    out = combine_guidance(cond, drop_text, uncond, 5.0, 4.0)
    expected = uncond + 5.0 * (cond - drop_text) + 4.0 * (drop_text - uncond)
    torch.testing.assert_close(out, expected)
    # the same sum written around cond (the form the APG branch uses)
    torch.testing.assert_close(out, cond + 4.0 * (cond - drop_text) + 3.0 * (drop_text - uncond))


def test_vanilla_two_pass_guidance():
    cond, drop_audio = _rand(4, 2, 3, 3, seed=4), _rand(4, 2, 3, 3, seed=5)
    out = combine_guidance_two_pass(cond, drop_audio, 4.0)
    torch.testing.assert_close(out, drop_audio + 4.0 * (cond - drop_audio))


def test_momentum_buffer():
    buf = MomentumBuffer(-0.75)
    a, b, c = _rand(3, seed=1), _rand(3, seed=2), _rand(3, seed=3)
    torch.testing.assert_close(buf.update(a), a)
    torch.testing.assert_close(buf.update(b), b - 0.75 * a)
    torch.testing.assert_close(buf.update(c), c - 0.75 * (b - 0.75 * a))
    buf.reset()
    torch.testing.assert_close(buf.update(c), c)


@pytest.mark.parametrize("threshold", [0.5, 1000.0, 0.0])
@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_apg_single_difference(threshold, eta):
    diff, cond = _rand(2, 4, 2, 3, 3, seed=6), _rand(2, 4, 2, 3, 3, seed=7)
    out = adaptive_projected_guidance(diff, cond, None, eta=eta, norm_threshold=threshold)
    torch.testing.assert_close(out, _hand_apg(diff, cond, eta, threshold))
    if eta == 0.0:  # orthogonal to each sample's conditional prediction
        dots = (out * cond).flatten(1).sum(-1)
        torch.testing.assert_close(dots, torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)


def test_apg_float32_keeps_dtype():
    diff, cond = _rand(4, 2, 3, 3, seed=8).float(), _rand(4, 2, 3, 3, seed=9).float()
    out = adaptive_projected_guidance(diff, cond, None, norm_threshold=1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _hand_apg(diff.double(), cond.double(), 0.0, 1.0), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError):
        adaptive_projected_guidance(diff[0], cond[0])


def test_apg_three_pass_with_momentum_over_steps():
    ts, as_, thr, eta, m = 5.0, 4.0, 2.0, 0.1, -0.75
    state = APGState(momentum=m, norm_threshold=thr, eta=eta)
    run_text = run_audio = None
    for step in range(3):
        cond, dt, un = (_rand(4, 2, 3, 3, seed=10 * step + k) for k in (1, 2, 3))
        out = combine_guidance(cond, dt, un, ts, as_, apg=state)
        d_text, d_audio = cond - dt, dt - un
        run_text = d_text if run_text is None else d_text + m * run_text
        run_audio = d_audio if run_audio is None else d_audio + m * run_audio
        expected = (
            cond + (ts - 1) * _hand_apg(run_text, cond, eta, thr) + (as_ - 1) * _hand_apg(run_audio, cond, eta, thr)
        )
        torch.testing.assert_close(out, expected)
    # a new chunk starts with fresh buffers
    state.reset()
    cond, dt, un = (_rand(4, 2, 3, 3, seed=100 + k) for k in (1, 2, 3))
    out = combine_guidance(cond, dt, un, ts, as_, apg=state)
    expected = cond + (ts - 1) * _hand_apg(cond - dt, cond, eta, thr) + (as_ - 1) * _hand_apg(dt - un, cond, eta, thr)
    torch.testing.assert_close(out, expected)


def test_apg_two_pass_uses_audio_buffer():
    state = APGState()
    assert (state.momentum, state.norm_threshold, state.eta) == (-0.75, 55.0, 0.0)
    c1, a1 = _rand(4, 2, 3, 3, seed=31) * 30, _rand(4, 2, 3, 3, seed=32) * 30
    c2, a2 = _rand(4, 2, 3, 3, seed=33) * 30, _rand(4, 2, 3, 3, seed=34) * 30
    out1 = combine_guidance_two_pass(c1, a1, 4.0, apg=state)
    out2 = combine_guidance_two_pass(c2, a2, 4.0, apg=state)
    torch.testing.assert_close(out1, c1 + 3.0 * _hand_apg(c1 - a1, c1, 0.0, 55.0))
    run = (c2 - a2) - 0.75 * (c1 - a1)
    torch.testing.assert_close(out2, c2 + 3.0 * _hand_apg(run, c2, 0.0, 55.0))
    assert state.text.running_average is None


# ---------------------------------------------------------------------------------------------------
# 3. image
# ---------------------------------------------------------------------------------------------------


def test_bucket_tables():
    assert len(ASPECT_RATIO_627) == 15 and len(ASPECT_RATIO_960) == 21
    assert ASPECT_RATIO_627["1.00"] == (640, 640) and ASPECT_RATIO_627["0.26"] == (320, 1216)
    assert ASPECT_RATIO_627["4.00"] == (1280, 320) and ASPECT_RATIO_960["0.22"] == (448, 2048)
    assert ASPECT_RATIO_960["1.00"] == (960, 960) and ASPECT_RATIO_960["3.75"] == (1920, 512)
    for table in (ASPECT_RATIO_627, ASPECT_RATIO_960):
        assert all(h % 64 == 0 and w % 64 == 0 for h, w in table.values())
    assert resolution_buckets("multitalk-480") is ASPECT_RATIO_627
    assert resolution_buckets("multitalk-720") is ASPECT_RATIO_960
    assert resolution_buckets("720p") is ASPECT_RATIO_960
    with pytest.raises(ValueError):
        resolution_buckets("multitalk-1080")


def test_closest_bucket():
    assert closest_bucket(1440, 2560, "multitalk-480") == (448, 896)  # 0.5625 -> "0.50"
    assert closest_bucket(1440, 2560, ASPECT_RATIO_960) == (704, 1280)  # -> "0.55"
    assert closest_bucket(1000, 1000, "multitalk-480") == (640, 640)
    assert closest_bucket(1920, 1080, "multitalk-480") == (832, 448)  # 1.78 -> "1.86"
    assert closest_bucket(5000, 100, "multitalk-720") == (1920, 512)
    # ties: the first key in table order wins
    assert closest_bucket(2, 1, {"1.0": (1, 1), "3.0": (3, 1)}) == (1, 1)
    # the original's value layout ([h, w], 1) is accepted too
    assert closest_bucket(1, 1, {"1.00": ([640, 640], 1)}) == (640, 640)


def test_center_crop_offsets_round_half_to_even():
    assert center_crop_offsets(5, 5, 4, 4) == (0, 0)  # round(0.5) == 0
    assert center_crop_offsets(7, 9, 4, 4) == (2, 2)  # round(1.5) == 2, round(2.5) == 2
    assert center_crop_offsets(64, 100, 32, 32) == (16, 34)
    with pytest.raises(ValueError):
        center_crop_offsets(4, 4, 5, 4)


def _test_image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_resize_and_center_crop_hand_computation():
    img = _test_image(100, 50)
    out = resize_and_center_crop(img, 32, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    # scale = max(32/50, 32/100) = 0.64 -> 64 x 32 (w x h), crop columns 16:48
    resized = np.asarray(img.resize((64, 32), resample=PIL.Image.BILINEAR)).astype(np.float32)
    expected = torch.from_numpy(resized[:, 16:48]).permute(2, 0, 1)
    expected = (expected / 255.0 - 0.5) * 2.0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert out.min() >= -1 and out.max() <= 1


def test_resize_and_center_crop_upsamples_and_converts_mode():
    img = _test_image(30, 40).convert("RGBA")
    out = resize_and_center_crop(img, 64, 64)  # scale = max(64/40, 64/30) -> 64 x 86 (w x h) ...
    assert out.shape == (3, 64, 64)
    rgb = img.convert("RGB")
    w, h = math.ceil(64 / 30 * 30), math.ceil(64 / 30 * 40)
    resized = np.asarray(rgb.resize((w, h), resample=PIL.Image.BILINEAR)).astype(np.float32)
    top = int(round((h - 64) / 2))
    expected = (torch.from_numpy(resized[top : top + 64, :64]).permute(2, 0, 1) / 255.0 - 0.5) * 2.0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    with pytest.raises(TypeError):
        resize_and_center_crop(np.zeros((4, 4, 3), np.uint8), 4, 4)


def test_load_image_any(tmp_path):
    img = _test_image(12, 8)
    arr = np.array(img)
    path = tmp_path / "img.png"
    img.save(path)
    for source in (img, str(path), path, arr, arr.astype(np.float32) / 255.0,
                   torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0,
                   torch.from_numpy(arr).permute(2, 0, 1)[None]):  # fmt: skip
        got = load_image_any(source)
        assert got.mode == "RGB" and got.size == (12, 8)
        np.testing.assert_array_equal(np.asarray(got), arr)
    assert load_image_any(arr[..., 0]).mode == "RGB"  # grayscale
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image_any(arr.astype(np.float32) / 127.5 - 1.0)
    with pytest.raises(ValueError):
        load_image_any(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(FileNotFoundError):
        load_image_any(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError):
        load_image_any(tmp_path / "bad.png")
    with pytest.raises(TypeError):
        load_image_any(12)
    tensor, src = preprocess_image(img, "multitalk-480")
    assert src == (8, 12) and tensor.shape == (3, 512, 768)  # 0.67 bucket


# ---------------------------------------------------------------------------------------------------
# 4. person masks
# ---------------------------------------------------------------------------------------------------


def test_bbox_convention_rows_first():
    # [top, left, bottom, right]: the original calls it [x_min, y_min, x_max, y_max] but indexes rows first
    masks = person_masks_from_bboxes([[2, 3, 6, 12]], height=10, width=20)
    assert masks.shape == (2, 10, 20) and masks.dtype == torch.float32
    expected = torch.zeros(10, 20)
    expected[2:6, 3:12] = 1
    assert torch.equal(masks[0], expected)
    assert torch.equal(masks[1], 1 - expected)


def test_bboxes_of_the_original_example():
    # examples/multitalk_example_1.json: a 2560 x 1440 (w x h) image, two people side by side
    bboxes = {"person1": [160, 120, 1280, 1080], "person2": [160, 1320, 1280, 2280]}
    masks = person_masks_from_bboxes(bboxes, 1440, 2560, num_persons=2)
    assert masks.shape == (3, 1440, 2560)
    assert masks[0].sum() == (1280 - 160) * (1080 - 120)
    assert masks[0, 160, 120] == 1 and masks[0, 1279, 1079] == 1 and masks[0, 1280, 500] == 0
    assert masks[1, 700, 2279] == 1 and masks[1, 700, 2280] == 0
    assert torch.equal(masks[2], ((masks[0] + masks[1]) == 0).float())


def test_bbox_overlap_floats_and_validation():
    masks = person_masks_from_bboxes([(0, 0, 4.9, 5.7), (2, 2, 6, 6)], 8, 8)  # int() truncation
    assert masks[0].sum() == 4 * 5
    assert masks[2, 3, 3] == 0 and masks[2, 7, 7] == 1
    with pytest.raises(ValueError, match="outside"):
        person_masks_from_bboxes([[0, 0, 9, 4]], 8, 8)
    with pytest.raises(ValueError, match="outside"):
        person_masks_from_bboxes([[-1, 0, 4, 4]], 8, 8)
    with pytest.raises(ValueError, match="empty"):
        person_masks_from_bboxes([[3, 0, 3, 4]], 8, 8)
    with pytest.raises(ValueError, match="persons"):
        person_masks_from_bboxes([[0, 0, 4, 4]], 8, 8, num_persons=2)
    with pytest.raises(ValueError):
        person_masks_from_bboxes([[0, 0, 4]], 8, 8)
    with pytest.raises(ValueError):
        person_masks_from_bboxes([], 8, 8)


def test_default_person_masks():
    ones = default_person_masks(1, 6, 7)
    assert ones.shape == (3, 6, 7) and torch.all(ones == 1)
    two = default_person_masks(2, 100, 200, face_scale=0.05)
    e0, e1 = torch.zeros(100, 200), torch.zeros(100, 200)
    e0[5:95, 5:95] = 1  # rows int(100*.05):int(100*.95); left half columns
    e1[5:95, 105:195] = 1  # right half: int(5 + 100):int(95 + 100)
    assert torch.equal(two[0], e0) and torch.equal(two[1], e1)
    assert torch.equal(two[2], ((e0 + e1) == 0).float())
    # odd width: half = 101 // 2 = 50 -> columns int(2.5)=2:int(47.5)=47 and int(52.5)=52:int(97.5)=97
    odd = default_person_masks(2, 40, 101)
    assert odd[0, 2].nonzero().flatten().tolist() == list(range(2, 47))
    assert odd[1, 2].nonzero().flatten().tolist() == list(range(52, 97))
    three = default_person_masks(3, 20, 300)
    assert three.shape == (4, 20, 300)
    for k, (c0, c1) in enumerate([(5, 95), (105, 195), (205, 295)]):
        assert three[k, 10].nonzero().flatten().tolist() == list(range(c0, c1))
        assert three[k, :, c0].nonzero().flatten().tolist() == list(range(1, 19))
    with pytest.raises(ValueError):
        default_person_masks(0, 10, 10)


def _nearest_idx(n_in, n_out):
    # torch's legacy nearest: src = floor(dst * n_in / n_out)
    return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(int), n_in - 1)


def test_latent_person_masks_nearest():
    m = torch.zeros(2, 8, 8)
    m[0, 0::2, 0::2] = 1  # only the sampled pixels are set
    m[1, 1::2, 1::2] = 1  # never sampled
    lat = latent_person_masks(m, 4, 4)
    assert lat.shape == (2, 4, 4)
    assert torch.all(lat[0] == 1) and torch.all(lat[1] == 0)


def test_latent_person_masks_follow_image_crop():
    # the original: source-size masks -> nearest cover-resize + centre crop (like the image) -> latent
    src_h, src_w, tgt_h, tgt_w, lat_h, lat_w = 45, 80, 16, 32, 4, 8
    masks = default_person_masks(2, src_h, src_w)
    got = latent_person_masks(masks, lat_h, lat_w, pixel_size=(tgt_h, tgt_w))
    scale = max(tgt_h / src_h, tgt_w / src_w)
    fh, fw = math.ceil(scale * src_h), math.ceil(scale * src_w)
    top, left = int(round((fh - tgt_h) / 2)), int(round((fw - tgt_w) / 2))
    rows = _nearest_idx(src_h, fh)[top : top + tgt_h][_nearest_idx(tgt_h, lat_h)]
    cols = _nearest_idx(src_w, fw)[left : left + tgt_w][_nearest_idx(tgt_w, lat_w)]
    expected = (masks.numpy()[:, rows][:, :, cols] > 0).astype(np.float32)
    np.testing.assert_array_equal(got.numpy(), expected)
    assert got.shape == (3, lat_h, lat_w)


# ---------------------------------------------------------------------------------------------------
# 5. colour correction
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rgb,lab",
    [
        # white: skimage gives (100, -0.00245, 0.00465), not exactly (100, 0, 0): the sRGB matrix rows
        # sum to (0.950456, 1.0, 1.088754), slightly off the D65 white point (0.95047, 1, 1.08883)
        ((1, 1, 1), (100.0, -0.0024549, 0.0046534)),
        ((0, 0, 0), (0.0, 0.0, 0.0)),
        # skimage.color.rgb2lab outputs as published
        ((1, 0, 0), (53.24058794, 80.09230823, 67.20275104)),
        ((0, 1, 0), (87.73509949, -86.18302974, 83.17970318)),
        ((0, 0, 1), (32.29567257, 79.18559091, -107.85730021)),
        ((0, 1, 1), (91.11330144, -48.09059623, -14.12632982)),
        ((1, 0, 1), (60.32350653, 98.23305386, -60.82101524)),
        ((1, 1, 0), (97.13950704, -21.55468102, 94.47812228)),
    ],
)
def test_lab_known_values(rgb, lab):
    got = rgb_to_lab(np.array([[rgb]], dtype=np.float64))[0, 0]
    np.testing.assert_allclose(got, lab, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lab_to_rgb(got[None, None])[0, 0], rgb, atol=1e-5)


def test_lab_roundtrip_and_clipping():
    x = np.random.default_rng(0).random((5, 6, 3))
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-6)
    out = lab_to_rgb(np.array([[[50.0, 120.0, -150.0], [100.0, 0.0, 200.0]]]))  # out of gamut
    assert out.min() >= 0.0 and out.max() <= 1.0 and np.isfinite(out).all()


def _hand_color_match(frames01, ref01, strength):
    """The original's loop, frame by frame, channel by channel ([0, 1] inputs)."""
    ref_lab = rgb_to_lab(ref01)
    out = []
    for frame in frames01:
        lab = rgb_to_lab(frame)
        new = lab.copy()
        for ch in range(3):
            ms, ss = lab[..., ch].mean(), lab[..., ch].std()
            mr, sr = ref_lab[..., ch].mean(), ref_lab[..., ch].std()
            new[..., ch] = mr if ss == 0 else (lab[..., ch] - ms) * (sr / ss) + mr
        corrected = np.clip(lab_to_rgb(new), 0, 1)
        out.append((1 - strength) * frame + strength * corrected)
    return np.stack(out)


@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_match_color_torch_layout(strength):
    rng = np.random.default_rng(3)
    frames = torch.from_numpy(rng.uniform(-1.1, 0.6, size=(1, 3, 4, 6, 5))).float()  # dim and out of range
    ref = torch.from_numpy(rng.uniform(-0.8, 1.0, size=(1, 3, 1, 6, 5))).float()
    frames[0, :, 2] = 0.25  # a flat frame: each channel goes to the reference mean
    out = match_color_lab(frames, ref, strength)
    assert out.shape == frames.shape and out.dtype == torch.float32
    f01 = np.clip((frames[0].permute(1, 2, 3, 0).double().numpy() + 1) / 2, 0, 1)
    r01 = np.clip((ref[0, :, 0].permute(1, 2, 0).double().numpy() + 1) / 2, 0, 1)
    expected = _hand_color_match(f01, r01, strength) * 2 - 1
    got = out[0].permute(1, 2, 3, 0).numpy()
    np.testing.assert_allclose(np.delete(got, 2, axis=0), np.delete(expected, 2, axis=0), atol=1e-5)
    # The flat frame: numpy's std of its L channel is ~3e-14, not 0, so the original amplifies rounding noise
    # there; we treat a std below 1e-9 as flat and the frame stays uniform.
    flat = got[2].reshape(-1, 3)
    np.testing.assert_allclose(flat, np.broadcast_to(flat[0], flat.shape), atol=1e-6)
    # unbatched layouts give the same numbers
    torch.testing.assert_close(match_color_lab(frames[0], ref[0, :, 0], strength), out[0])


def test_match_color_numpy_layout_and_statistics():
    rng = np.random.default_rng(4)
    frames = rng.uniform(-1, 1, size=(3, 8, 8, 3)) * np.array([0.3, 0.9, 0.5])
    ref = rng.uniform(-0.2, 0.9, size=(8, 8, 3))
    out = match_color_lab(frames, ref, 1.0)
    expected = _hand_color_match((frames + 1) / 2, (ref + 1) / 2, 1.0) * 2 - 1
    np.testing.assert_allclose(out, expected, atol=1e-10)
    # [0, 1] inputs through value_range
    out01 = match_color_lab((frames + 1) / 2, (ref + 1) / 2, 1.0, value_range=(0.0, 1.0))
    np.testing.assert_allclose(out01 * 2 - 1, out, atol=1e-10)
    # after full correction the LAB means match the reference's closely (up to gamut clipping)
    ref_lab = rgb_to_lab((ref + 1) / 2)
    for frame in out:
        np.testing.assert_allclose(rgb_to_lab((frame + 1) / 2).mean((0, 1)), ref_lab.mean((0, 1)), atol=3.0)


def test_match_color_edge_cases():
    frames = torch.rand(3, 2, 4, 4) * 2 - 1
    assert match_color_lab(frames, frames[:, 0], 0.0) is frames
    with pytest.raises(ValueError):
        match_color_lab(frames, frames[:, 0], 1.5)
    with pytest.raises(ValueError):
        match_color_lab(frames.permute(1, 0, 2, 3), frames[:, 0], 1.0)  # [T, C, H, W] is not accepted
    # a frame equal to the reference is left (almost) unchanged
    same = match_color_lab(frames[:, :1], frames[:, 0], 1.0)
    torch.testing.assert_close(same, frames[:, :1], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------
# 6. video
# ---------------------------------------------------------------------------------------------------


def _probe(path):
    info = subprocess.run([get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    video = [line for line in info.splitlines() if "Video:" in line]
    audio = [line for line in info.splitlines() if "Audio:" in line]
    return video, audio


def _count_frames(path):
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


def _decoded_audio_samples(path, sample_rate=16000):
    raw = subprocess.run(
        [get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a", "-f", "s16le", "-ac", "1",
         "-ar", str(sample_rate), "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, dtype=np.int16)


def _sine(seconds, sr=16000, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_export_video_with_audio(tmp_path):
    frames = np.zeros((10, 32, 48, 3), dtype=np.float32)
    frames[..., 0] = np.linspace(0, 1, 10)[:, None, None]
    frames[..., 1] = 0.5
    path = tmp_path / "out" / "talk.mp4"  # the folder is created
    got = export_to_video_with_audio(frames, _sine(1.0), path, fps=25, sample_rate=16000)
    assert got == str(path) and path.is_file()
    video, audio = _probe(path)
    assert len(video) == 1 and "h264" in video[0] and "48x32" in video[0] and "25 fps" in video[0]
    assert len(audio) == 1 and "aac" in audio[0]
    assert _count_frames(path) == 10
    # audio trimmed to the video: 10 frames / 25 fps = 0.4 s
    assert abs(len(_decoded_audio_samples(path)) - 6400) <= 1024
    assert sorted(os.listdir(path.parent)) == ["talk.mp4"]  # no temporary file left
    # the colours survive the round trip (approximately: lossy codec)
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), "ffmpeg")
    last = reader.get_data(9)
    reader.close()
    assert abs(float(last[..., 1].mean()) - 127) < 4 and abs(float(last[..., 0].mean()) - 255) < 6


def test_export_audio_padding_and_file_input(tmp_path):
    import soundfile as sf

    frames = [PIL.Image.new("RGB", (16, 16), (200, 10, 10)) for _ in range(25)]
    # short audio is zero-padded to 1 s
    path = export_to_video_with_audio(frames, torch.from_numpy(_sine(0.3)), tmp_path / "pad.mp4")
    samples = _decoded_audio_samples(path)
    assert abs(len(samples) - 16000) <= 1024
    assert np.abs(samples[12000:15000]).max() < 50  # silence after the speech
    # an audio file (longer than the video, other sample rate, stereo) is trimmed by ffmpeg
    wav = tmp_path / "voice.wav"
    sf.write(wav, np.stack([_sine(3.0, 22050)] * 2, axis=1), 22050)
    path2 = export_to_video_with_audio(frames, wav, tmp_path / "file.mp4")
    assert _count_frames(path2) == 25
    assert abs(len(_decoded_audio_samples(path2)) - 16000) <= 1024
    with pytest.raises(FileNotFoundError):
        export_to_video_with_audio(frames, tmp_path / "nope.wav", tmp_path / "x.mp4")


def test_export_video_without_audio_and_odd_size(tmp_path):
    frames = np.full((5, 15, 21, 3), 128, dtype=np.uint8)
    with pytest.warns(UserWarning, match="odd"):
        path = export_to_video(frames, tmp_path / "odd.mp4", fps=10)
    video, audio = _probe(path)
    assert "22x16" in video[0] and audio == []
    assert _count_frames(path) == 5


def test_export_errors_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        export_to_video([], tmp_path / "empty.mp4")
    with pytest.raises(ValueError, match="no frames"):
        export_to_video(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "empty.mp4")
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        export_to_video(np.zeros((8, 8, 3), np.uint8), tmp_path / "single.mp4")
    mixed = [np.zeros((8, 8, 3), np.uint8)] * 3 + [np.zeros((10, 8, 3), np.uint8)]
    with pytest.raises(ValueError, match="size"):
        export_to_video(mixed, tmp_path / "mixed.mp4")
    with pytest.raises(ValueError):
        export_to_video_with_audio(np.zeros((2, 8, 8, 3), np.uint8), None, tmp_path / "a.mp4")
    with pytest.raises(ValueError):
        export_to_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "a.mp4", fps=0)
    # ffmpeg itself failing (unknown preset) -> RuntimeError with its message, no partial file
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        export_to_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "bad.mp4", preset="no-such-preset")
    assert os.listdir(tmp_path) == []
