"""timm's ResNets: ``timm:<name>`` for timm models in torchvision's ResNet layout (``timm:resnet50``,
``timm:resnet50d``, ``timm:seresnet50``, ``timm:legacy_seresnet50``, ...).

Blocks come from the module tree (``forward_intermediates`` gives only stage
outputs): the stem, i.e. the module after which ``layer1`` starts (``maxpool``
in timm's ResNet, deep stems included; ``pool0`` in the legacy SENets), then
every ``layerS.B``. The identity path is the chain of ``downsample`` shortcuts,
see :func:`~vision_lens.adapters.resnet_layout.shortcut_stride`: exact for
1x1 strided conv + BN and for timm's ``avg_down`` (``resnet*d``) on inputs
whose side is a multiple of 32; blocks before any other shortcut (e.g.
GroupNorm in ``resnet50_gn``) get no path, so their logit lens and transfers
are reported as undefined. Other layouts of the same timm modules are refused.
Weights, preprocessing and classes: :mod:`~vision_lens.adapters.timm_family`.
"""

from __future__ import annotations

from timm.data import resolve_data_config
from torch import nn

from ..readout import Block
from .errors import ModelError
from .resnet_layout import STAGES, resnet_blocks
from .timm_family import AVERAGE_POOLS, TimmAdapter, timm_family


def _resnet_layout(model: nn.Module, name: str) -> list[Block]:
    """The blocks of a timm model in torchvision's ResNet layout; ModelError for any other layout."""
    children = dict(model.named_children())
    order = list(children)
    pool = getattr(model, "global_pool", None)
    if (
        not all(isinstance(children.get(s), nn.Sequential) for s in STAGES)
        or order.index("layer1") == 0
        or not all(hasattr(block, "downsample") for s in STAGES for block in children[s])
        or getattr(pool, "pool_type", None) not in AVERAGE_POOLS
        or not isinstance(model.get_classifier(), nn.Linear)
    ):
        raise ModelError(
            f"--model {name} ({type(model).__name__}) is not supported yet: vision-lens reads timm models "
            f"laid out like torchvision's ResNet (stem, layer1..layer4 of residual blocks with a downsample "
            f"shortcut, global average pool, linear classifier), e.g. timm:resnet50 or timm:resnet50d"
        )
    stem = order[order.index("layer1") - 1]
    modules = [f["module"] for f in model.feature_info]
    channels = {s: model.feature_info[modules.index(s)]["num_chs"] for s in STAGES}
    # The stem's output is layer1's input: the feature_info entry before layer1 is the
    # stem's last activation, whose channels the following pool keeps.
    channels[stem] = model.feature_info[modules.index("layer1") - 1]["num_chs"]
    # Stage maps are input_side / 4, / 8, / 16 where avg_down shortcuts average 2x2 cells.
    input_side = resolve_data_config(model=model)["input_size"][-1]
    return resnet_blocks(model, stem, channels, even_maps=input_side % 32 == 0)


class TimmResNetAdapter(TimmAdapter):
    """A timm ResNet-family classifier."""

    def __init__(self, model: nn.Module, name: str):
        self.model = model
        self.blocks = _resnet_layout(model, name)

    @property
    def unembed(self) -> nn.Linear:
        return self.model.get_classifier()


FAMILY = timm_family(check=_resnet_layout, adapter=TimmResNetAdapter)
