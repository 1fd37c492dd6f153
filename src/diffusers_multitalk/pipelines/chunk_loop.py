"""The chunk loop MultiTalk and InfiniteTalk share: chunks of frames denoised one after another, each continuing from
the last frames of the one before; the pipelines differ only in how they condition a chunk (their
`prepare_chunk_conditioning` and `pin_motion_latents` methods)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..audio.encoder import audio_windows, mirror_pad_embedding
from ..audio.processing import TARGET_SAMPLE_RATE
from ..utils.host_memory import release_host_memory
from .color_correction import match_color_lab
from .guidance import APGState, combine_guidance, combine_guidance_two_pass
from .sampling import add_noise_flow, set_multitalk_timesteps
from .video_io import VideoWriter


__all__ = ["ChunkConditioning", "ChunkLoopSettings", "run_chunk_loop"]


@dataclass
class ChunkConditioning:
    """What conditions one chunk.

    Args:
        image_embeds: CLIP tokens `[1, 257, dim]` the DiT's image cross-attention sees.
        condition: the VAE condition `[1, 4 + 16, T, h, w]` (known-frame mask channels, then latents).
        motion_latents: latents of the frames the chunk continues from `[1, 16, t, h, w]`; re-noised into the chunk's
            leading latent frames (for every chunk but the first) before the loop and after every step.
        num_motion_frames: pixel frames of the chunk that repeat the previous chunk's (dropped from the output).
    """

    image_embeds: torch.Tensor
    condition: torch.Tensor
    motion_latents: torch.Tensor
    num_motion_frames: int


@dataclass
class ChunkLoopSettings:
    """The sampling settings of one call (see `WanMultiTalkPipeline.__call__` for their meanings)."""

    num_inference_steps: int
    shift: float
    text_guidance_scale: float
    audio_guidance_scale: float
    use_apg: bool = False
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0
    color_correction_strength: float = 0.0
    output_type: str = "np"
    callback_on_step_end: Callable | None = None
    callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",)
    attention_kwargs: dict[str, Any] | None = None
    fps: int = 25


def run_chunk_loop(
    pipe,
    source,
    embeddings: list[torch.Tensor],
    plan,
    motion_frames: int,
    latent_size: tuple[int, int],
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    person_masks: torch.Tensor | None,
    color_reference: torch.Tensor | None,
    mixed_audio: np.ndarray | None,
    settings: ChunkLoopSettings,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    output_path=None,
):
    """Generates `plan.num_chunks` chunks of `plan.chunk_frames` frames and keeps `plan.num_frames` frames.

    Per chunk: noise (one `randn` of the chunk's latent shape, or `latents` for the first), then
    `pipe.prepare_chunk_conditioning(source, chunk, audio_start, previous_video, num_frames, motion_frames, device)`,
    the shifted flow-matching schedule, the motion latents re-noised into the leading frames (later chunks), and per
    step the guided prediction (3 passes, or 2 with a text scale of 1; APG optional) and an Euler step.
    `pipe.pin_motion_latents(latent, motion_latents)` runs before every forward pass and after every step. Decoded
    chunks are colour-matched to `color_reference` and streamed to `output_path` (an mp4 with `mixed_audio`) or
    gathered. The audio windows advance by `chunk_frames - motion_frames`; the embeddings are mirror-padded before
    the chunk that reaches the end, as the references do.

    Returns `(frames, audio, video_path)`: frames post-processed to `settings.output_type` (the chunks' latents for
    "latent"; None when written to `output_path`), the mixed audio trimmed to the frames made, the mp4's path or None.
    """
    device = pipe._execution_device
    transformer_dtype = pipe.transformer.dtype
    num_frames, num_chunks, frames_to_keep = plan.chunk_frames, plan.num_chunks, plan.num_frames
    num_steps, fps = settings.num_inference_steps, settings.fps
    lat_t = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    three_pass = not math.isclose(settings.text_guidance_scale, 1.0)
    if num_chunks == 1:  # a chunk past the audio's end is driven by its mirrored tail, as streaming's last one
        embeddings = [mirror_pad_embedding(e, num_frames) for e in embeddings]

    audio_out = None
    if mixed_audio is not None:
        length = int(round(frames_to_keep / fps * TARGET_SAMPLE_RATE))
        audio_out = np.pad(mixed_audio, (0, max(0, length - len(mixed_audio))))[:length].astype(np.float32)
    # Frames go to the mp4 as each chunk is decoded (flat memory), or are gathered for the caller.
    writer = VideoWriter(output_path, fps=fps, audio=audio_out, sample_rate=TARGET_SAMPLE_RATE) if output_path else None

    videos, chunk_latents = [], []
    frames_done = 0
    audio_start = 0
    previous_video = None
    pipe._num_timesteps = num_steps
    try:
        with pipe.progress_bar(total=num_chunks * num_steps) as progress_bar:
            for chunk in range(num_chunks):
                is_first = chunk == 0
                if num_chunks > 1:
                    progress_bar.set_description(f"chunk {chunk + 1}/{num_chunks}")
                audio_embeds = torch.stack([audio_windows(e, num_frames, start=audio_start) for e in embeddings])[
                    None
                ].to(device=device, dtype=transformer_dtype)
                silent_audio = torch.zeros_like(audio_embeds[:, -1:])

                noise = pipe.prepare_latents(
                    (1, 16, lat_t, *latent_size), generator, device, latents if is_first else None
                )
                conditioning = pipe.prepare_chunk_conditioning(
                    source, chunk, audio_start, previous_video, num_frames, motion_frames, device
                )
                image_embeds = conditioning.image_embeds.to(transformer_dtype)
                condition = conditioning.condition.to(transformer_dtype)
                motion_latents = conditioning.motion_latents
                num_motion_latents = motion_latents.shape[2]

                # Cache hooks start every chunk afresh, as the reference's TeaCache counter does.
                pipe.transformer._reset_stateful_cache()
                timesteps = set_multitalk_timesteps(pipe.scheduler, num_steps, settings.shift, device=device)
                sigmas = pipe.scheduler.sigmas
                latent = noise
                if not is_first:
                    latent[:, :, :num_motion_latents] = add_noise_flow(
                        motion_latents, torch.randn(motion_latents.shape, generator=generator, device=device), sigmas[0]
                    )
                apg = APGState(settings.apg_momentum, settings.apg_norm_threshold) if settings.use_apg else None

                for i, t in enumerate(timesteps):
                    if pipe.interrupt:
                        continue
                    pipe._current_timestep = t
                    latent = pipe.pin_motion_latents(latent, motion_latents)
                    model_input = torch.cat([latent.to(transformer_dtype), condition], dim=1)
                    timestep = t.expand(1)

                    # Each guidance branch has its own cache context (TeaCache, FirstBlockCache, ...).
                    step = dict(step_index=i, num_inference_steps=num_steps, timestep=t, sigma=float(sigmas[i]))
                    inputs = (model_input, timestep, image_embeds)

                    def run(branch, text, audio_input, step=step, inputs=inputs):
                        hidden_states, timestep_input, image_input = inputs
                        with pipe.transformer.cache_context(branch, **step):
                            return pipe.transformer(
                                hidden_states,
                                timestep_input,
                                text,
                                image_input,
                                audio_input,
                                ref_target_masks=person_masks,
                                return_dict=False,
                                attention_kwargs=settings.attention_kwargs,
                            )[0].float()

                    noise_cond = run("cond", prompt_embeds, audio_embeds)
                    if three_pass:
                        noise_drop_text = run("drop_text", negative_prompt_embeds, audio_embeds)
                        noise_uncond = run("uncond", negative_prompt_embeds, silent_audio)
                        noise_pred = combine_guidance(
                            noise_cond,
                            noise_drop_text,
                            noise_uncond,
                            settings.text_guidance_scale,
                            settings.audio_guidance_scale,
                            apg,
                        )
                    else:
                        noise_drop_audio = run("drop_audio", prompt_embeds, silent_audio)
                        noise_pred = combine_guidance_two_pass(
                            noise_cond, noise_drop_audio, settings.audio_guidance_scale, apg
                        )

                    latent = pipe.scheduler.step(noise_pred, t, latent, return_dict=False)[0]
                    if not is_first:
                        latent[:, :, :num_motion_latents] = add_noise_flow(
                            motion_latents,
                            torch.randn(motion_latents.shape, generator=generator, device=device),
                            sigmas[i + 1],
                        )
                    latent = pipe.pin_motion_latents(latent, motion_latents)

                    if settings.callback_on_step_end is not None:
                        available = {"latents": latent, "noise_pred": noise_pred}
                        callback_kwargs = {k: available[k] for k in settings.callback_on_step_end_tensor_inputs}
                        callback_outputs = settings.callback_on_step_end(
                            pipe, chunk * num_steps + i, t, callback_kwargs
                        )
                        latent = callback_outputs.pop("latents", latent)
                    progress_bar.update()

                if settings.output_type == "latent":
                    chunk_latents.append(latent)
                    if num_chunks == 1:
                        break
                video = pipe.decode_latents(latent)
                if color_reference is not None and settings.color_correction_strength > 0:
                    video = match_color_lab(video, color_reference, settings.color_correction_strength)
                new_frames = video if is_first else video[:, :, conditioning.num_motion_frames :]
                new_frames = new_frames[:, :, : frames_to_keep - frames_done]
                frames_done += new_frames.shape[2]
                if writer is not None:
                    writer.write(pipe.video_processor.postprocess_video(new_frames, output_type="np")[0])
                    release_host_memory()  # this chunk's temporaries go back to the OS: flat RSS in length
                elif settings.output_type != "latent":
                    videos.append(new_frames)

                # Next chunk: continue from this one's last frames, advance the audio. An interrupt ends the video
                # with this chunk.
                if chunk == num_chunks - 1 or pipe.interrupt:
                    break
                previous_video = video
                audio_start += num_frames - motion_frames
                audio_end = audio_start + num_frames
                if audio_end >= frames_to_keep:
                    embeddings = [mirror_pad_embedding(e, audio_end) for e in embeddings]
        if writer is not None:
            writer.close()  # an interrupted video's audio ends with its frames (the writer cuts it)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        pipe._current_timestep = None
        pipe.transformer._reset_stateful_cache()
        pipe.maybe_free_model_hooks()

    if audio_out is not None and frames_done and frames_done < frames_to_keep:
        audio_out = audio_out[: int(round(frames_done / fps * TARGET_SAMPLE_RATE))]
    if writer is not None:
        return None, audio_out, writer.path
    if settings.output_type == "latent":
        return chunk_latents, audio_out, None
    frames = pipe.video_processor.postprocess_video(torch.cat(videos, dim=2), output_type=settings.output_type)
    return frames, audio_out, None
