"""The remote code of a converted SoulX-FlashTalk repository: `WanFlashTalkPipeline` for `DiffusionPipeline.from_pretrained`.

The repository's `model_index.json` names this file (`"_class_name": ["pipeline_wan_flashtalk",
"WanFlashTalkPipeline"]`), so that

    pipe = DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)

loads the pipeline in a process that never imported diffusers-multitalk. It holds no model code: the pipeline is the
installed package's (diffusers-multitalk, `pip install -e .` from its checkout), which, once imported, also loads the repository without
remote code (`WanFlashTalkPipeline.from_pretrained(repo)`).
"""

from diffusers_multitalk.pipelines.pipeline_wan_flashtalk import WanFlashTalkPipeline


__all__ = ["WanFlashTalkPipeline"]
