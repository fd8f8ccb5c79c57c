"""Causal language models of ``transformers``: ``hf:<folder or hub id>`` (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, ...).

The readout is tuned-lens's. The lensed blocks are the embedding output, read at
the input of the first decoder layer (``layer_0``, which equals
``hidden_states[0]``), and every decoder layer's output; each is the residual
stream, so every identity path is the identity and transfer is defined for every
pair. A row is one token position's residual vector (capture picks the positions:
:mod:`~vision_lens.text`), and the unembedding is the model's own final norm
followed by its output embedding, as tuned-lens's ``Unembed``: exact at the last
block. The last entry of ``hidden_states`` is taken after the final norm in
these families, so the blocks are read by hooks on the layers, never from
``hidden_states``.

The layout is found, not assumed: the decoder layers are the base model's one
``nn.ModuleList`` (``h``, ``layers``), the final norm its child named ``norm``,
``ln_f`` or ``final_layer_norm``; a model laid out otherwise is refused by name.
Its text data are read with the tokenizer of ``--tokenizer`` (default: the model's own
folder or hub id). A folder named ``results/...`` that is not there is read from this
installation's committed results (:func:`~vision_lens.resources.located`), so the
reference language model, ``hf:results/checkpoints/lm-reference``, loads from any
working folder of a checkout.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..readout import Block, IdentityPath
from ..resources import located
from .base import ModelAdapter, ModelFamily
from .errors import ModelError, UnknownModelError, WeightsError
from .loading import file_sha256, read_checkpoint
from .weights import LoadedWeights

FINAL_NORMS = ("norm", "ln_f", "final_layer_norm")  # the base model's final norm: Llama/Qwen2, GPT-2, GPT-NeoX
STAGE = "layers"  # one residual stream of one width: a single stage


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ModelError("hf: models need the transformers package: pip install 'vision-lens[hf]'") from exc
    return transformers


def read_config(arch: str):
    """The ``transformers`` config of ``arch`` (a folder or a hub id), or UnknownModelError saying why not."""
    transformers = _transformers()
    try:
        return transformers.AutoConfig.from_pretrained(located(arch))
    except (OSError, ValueError, KeyError) as exc:
        raise UnknownModelError(f"--model hf:{arch}: no transformers config could be read there ({exc}); pass a "
                                "folder written by save_pretrained or a Hugging Face hub id") from exc


def build(arch: str, state: dict | None, num_classes: int | None) -> nn.Module:
    """The causal LM of ``arch``'s config, randomly initialised (its weights, if any, are loaded afterwards)."""
    transformers = _transformers()
    config = read_config(arch)
    if state is not None and not any(k.endswith("embed_tokens.weight") or k.endswith("wte.weight")
                                     or k.endswith("embed_in.weight") or k.endswith("lm_head.weight")
                                     or k.endswith("embed_out.weight") for k in state):
        raise WeightsError(f"no token embedding in it, so not a checkpoint of the causal LM hf:{arch}")
    # The eager attention: the same numbers on every device, and hooks see plain tensors. float32 whatever the
    # checkpoint's dtype (from_config follows the config's, e.g. a float16 export): lenses are fitted in float32.
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float()


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))


def load_published(model: nn.Module, arch: str) -> str:
    """The weights of ``arch`` (its folder, or the hub through ``transformers``' own loader) loaded into ``model``;
    their id is the sha256 of the weight files of the folder, or the hub id and its revision."""
    transformers, source = _transformers(), located(arch)
    try:
        published = transformers.AutoModelForCausalLM.from_pretrained(source)
    except OSError as exc:
        raise WeightsError(f"could not load the weights of hf:{arch} ({exc}); offline, pass a folder written by "
                           "save_pretrained") from exc
    model.load_state_dict(published.state_dict())
    del published
    folder = Path(source)
    if folder.is_dir():
        files = _weight_files(folder)
        return ";".join(f"{f.name}:{file_sha256(f)}" for f in files) or f"hf:{folder.resolve()}"
    revision = getattr(model.config, "_commit_hash", None)
    return f"hf:{arch}" + (f"@{revision}" if revision else "")


def read(path: str) -> dict[str, Tensor]:
    """A local weights file: safetensors, or a torch state dict."""
    if path.endswith(".safetensors"):
        if not Path(path).is_file():
            raise FileNotFoundError(f"--weights {path}: no such file")
        from safetensors.torch import load_file

        return load_file(path)
    return read_checkpoint(path)


def layout(model: nn.Module, name: str) -> tuple[nn.Module, nn.ModuleList, nn.Module, str]:
    """``(base model, decoder layers, final norm, the layers' module path)`` of ``model``; ModelError naming what is
    missing where it is laid out otherwise."""
    base = model.base_model
    lists = [(n, m) for n, m in base.named_children() if isinstance(m, nn.ModuleList)]
    norms = [m for n, m in base.named_children() if n in FINAL_NORMS]
    head = model.get_output_embeddings()
    if len(lists) != 1 or len(norms) != 1 or not isinstance(head, nn.Linear):
        raise ModelError(
            f"--model {name} ({type(model).__name__}) is not supported yet: vision-lens reads a causal LM whose base "
            f"model holds one list of decoder layers and a final norm named {', '.join(FINAL_NORMS)}, with a linear "
            f"output embedding (found {len(lists)} layer lists, {len(norms)} final norms, head "
            f"{type(head).__name__})")
    prefix = next(n for n, m in model.named_modules() if m is base)
    return base, lists[0][1], norms[0], f"{prefix}.{lists[0][0]}" if prefix else lists[0][0]


class CausalLMAdapter(ModelAdapter):
    """A ``transformers`` causal LM: blocks ``layer_0`` (the embedding output) and every decoder layer; unembed the
    final norm and the output embedding."""

    data_kind = "text"
    input_size = None
    class_folders = None

    def __init__(self, model: nn.Module, name: str, tokenizer: str):
        self.model = model
        self.tokenizer_name = tokenizer
        self._base, layers, norm, path = layout(model, name)
        width = model.config.hidden_size
        identity = IdentityPath.identity(width)
        self.blocks = [Block("embed", f"{path}.0", width, identity, stage=STAGE, reads="input")]
        self.blocks += [Block(f"{path}.{i}", f"{path}.{i}", width, identity, stage=STAGE) for i in range(len(layers))]
        self._unembed = nn.Sequential(norm, model.get_output_embeddings())
        self.class_names = [str(i) for i in range(self.num_classes)]

    @property
    def unembed(self) -> nn.Module:
        return self._unembed

    @property
    def transform(self):
        """Text has no per-item preprocessing: the tokenizer cuts it into windows (:mod:`~vision_lens.text`)."""
        return None

    @property
    def context(self) -> int:
        """The longest window the model takes."""
        config = self.model.config
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048))

    def load_tokenizer(self, name: str | None = None):
        """The ``transformers`` tokenizer of ``name`` (default: the model's own folder or hub id)."""
        name = name or self.tokenizer_name
        try:
            return _transformers().AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"no tokenizer could be read from {name} ({exc.__class__.__name__}: {exc}); pass "
                             "--tokenizer a folder or hub id holding the model's tokenizer") from exc

    def run_blocks(self, ids: Tensor) -> None:
        """Every block once on the token windows ``ids`` ``(N, T)``, without the head's ``N x T x vocab`` logits."""
        self._base(input_ids=ids, use_cache=False)

    def logits(self, ids: Tensor) -> Tensor:
        """The model's logits ``(N, T, vocab)`` of the token windows ``ids``."""
        return self.model(input_ids=ids, use_cache=False).logits


def wrap(model: nn.Module, arch: str, weights: LoadedWeights) -> ModelAdapter:
    return CausalLMAdapter(model, f"hf:{arch}", located(arch))


FAMILY = ModelFamily(build, wrap, load_published=load_published, read=read)

