"""Vision Transformers with a class token: ``cifar:vit`` and ``timm:vit_*`` (timm's ``VisionTransformer``).

The readout is tuned-lens's, on images. The lensed blocks are the embedding
output (the input to the first block, hooked at ``norm_pre``: tuned-lens's
``layer_0``) and every transformer block ``blocks.N``; each block's output is the
residual stream, so every block's identity path is the identity and transfer and
the shared lens are defined for every pair. A lens reads the class token's
residual vector, and ``unembed`` is the model's own final norm followed by its
head, as the LLM tuned lens reads a token's stream through ``ln_f`` and the
unembedding: exact at the last block. At the default ``--pool-grid 1`` every
learned lens, the linear probe included, reads the class token alone (so the
tuned lens is tuned-lens's ``unembed(h + A h + b)``); a larger grid adds the
patch tokens' averages over grid cells (:class:`~vision_lens.readout.BlockPooling`).

A ViT that pools its tokens before the head (``global_pool='avg'`` and the like,
or an attention-pool head), or that averages two heads on two tokens (DeiT's
distilled models), has no single vector whose unembedding gives its logits, so
it is refused by name rather than approximated.
"""

from __future__ import annotations

from torch import nn

from ..readout import Block, IdentityPath
from .base import ModelAdapter
from .errors import ModelError

STAGE = "blocks"  # a ViT is a single stage: every block reads and writes one stream of one width


def check_readout(model: nn.Module, name: str) -> None:
    """ModelError, naming the config, where no class token's vector gives ``model``'s logits exactly."""
    if getattr(model, "head_dist", None) is not None:
        raise ModelError(
            f"--model {name}: this ViT averages two heads, one on its class token and one on its distillation token "
            f"(DeiT's distilled models), so no single token's vector gives its logits and an exact logit lens does "
            f"not exist; vision-lens refuses it rather than approximate. Use its undistilled twin, e.g. "
            f"timm:deit_tiny_patch16_224"
        )
    pool = getattr(model, "global_pool", None)
    if getattr(model, "cls_token", None) is None or pool != "token" or getattr(model, "attn_pool", None) is not None:
        raise ModelError(
            f"--model {name}: this ViT pools its tokens before the head (global_pool={pool!r}, class token: "
            f"{getattr(model, 'cls_token', None) is not None}), so no single token's vector gives its logits and an "
            f"exact logit lens does not exist; vision-lens refuses it rather than approximate. Use a ViT that reads "
            f"its class token (global_pool='token'), e.g. timm:vit_small_patch16_224 or timm:deit_small_patch16_224"
        )


class VisionTransformerAdapter(ModelAdapter):
    """A class-token ViT: blocks ``embed``, ``blocks.0`` ..; unembed ``norm``, ``fc_norm``, ``head``.

    The family that wraps it sets the classes, the preprocessing and the input size (``cifar.read_as_cifar``,
    ``timm_hub.read_as_timm``).
    """

    def __init__(self, model: nn.Module):
        check_readout(model, f"{type(model).__name__}")
        self.model = model
        dim = model.embed_dim
        path = IdentityPath.identity(dim)
        tokens = (model.num_prefix_tokens, *model.patch_embed.grid_size)
        self.blocks = [Block("embed", "norm_pre", dim, path, stage=STAGE, tokens=tokens)]
        self.blocks += [Block(f"blocks.{i}", f"blocks.{i}", dim, path, stage=STAGE, tokens=tokens)
                        for i in range(len(model.blocks))]
        # The final norm acts per token, so norm(x)[:, 0] == norm(x[:, 0]); fc_norm (Identity unless asked for)
        # normalises the pooled class token; head_drop is the identity in eval mode.
        self._unembed = nn.Sequential(model.norm, model.fc_norm, model.head)

    @property
    def unembed(self) -> nn.Module:
        return self._unembed

    @property
    def transform(self):
        return self._transform
