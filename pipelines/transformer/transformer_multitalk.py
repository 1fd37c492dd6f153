"""The remote code of a converted MultiTalk repository's `transformer/`: `MultiTalkTransformer3DModel`.

`model_index.json` names it `["transformer_multitalk", "MultiTalkTransformer3DModel"]`, a library diffusers finds
in this folder when the caller has not imported diffusers-multitalk. The model is the installed package's.
"""

from diffusers_multitalk.models.transformer_multitalk import MultiTalkTransformer3DModel


__all__ = ["MultiTalkTransformer3DModel"]
