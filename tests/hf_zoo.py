"""A zoo of tiny, seeded, random-weight Hugging Face model directories, one per architecture the
block-by-block calibrated pruning must handle (nothing downloaded: configs, weights and tokenizers
are all built here). Works with transformers 4.x and 5.x; what differs between them is written
down in docs/architectures.md.

Imports torch and transformers: import it only after ``pytest.importorskip("transformers")``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

KINDS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gpt2", "bert", "mixtral", "qwen2_moe"]

AUTO_CLASS = {kind: transformers.AutoModelForCausalLM for kind in KINDS}
AUTO_CLASS["bert"] = transformers.AutoModelForSequenceClassification

VOCAB_SIZE = 128
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
# transformers' Qwen2Tokenizer pre-tokenization (see build_tokenizer)
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
WORDS = ("the a cat dog sat on mat ran fast slow big small red blue green old new one two three "
         "is was and or but not very bird fish tree house car road sun moon").split()

# The decoder-only shape shared by every causal kind: 2 layers, hidden 32, 4 query heads over
# 2 key/value heads (GQA everywhere it exists, so a name-mapping bug that swaps k and q shows up
# as a shape mismatch), head_dim 8, MLP 64.
DECODER = dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
               pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)

# Config keyword arguments per kind, beyond (or replacing) DECODER. Explicit values where a default
# is large (gemma's head_dim 256) or points outside the tiny vocabulary (phi3's pad id 32000).
CONFIGS = {
    "llama": dict(DECODER, tie_word_embeddings=True),
    "qwen2": dict(DECODER),  # q/k/v carry biases
    "qwen3": dict(DECODER, head_dim=8),  # per-head q_norm / k_norm
    "mistral": dict(DECODER, head_dim=8, sliding_window=16),
    "phi3": dict(DECODER, original_max_position_embeddings=64),  # fused qkv_proj and gate_up_proj Linears
    "gemma": dict(DECODER, head_dim=8, tie_word_embeddings=True),
    "gpt2": dict(vocab_size=VOCAB_SIZE, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64,
                 pad_token_id=0, bos_token_id=2, eos_token_id=3),  # Conv1D, tied lm_head
    "bert": dict(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, num_labels=2, pad_token_id=0),
    "mixtral": dict(DECODER, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(DECODER, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[]),
}


def build_model_dir(kind: str, directory: Path, dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """Write a tiny ``kind`` model (config with ``architectures``, safetensors weights) and its fast
    tokenizer into ``directory``; the same ``kind`` gives the same bytes every time (under one
    transformers version: initialisation differs between versions). ``overrides``: config keyword
    arguments replacing the kind's (``num_hidden_layers=5`` for block-dropping tests)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = transformers.AutoConfig.for_model(kind, **{**CONFIGS[kind], **overrides})
    torch.manual_seed(0)
    model = AUTO_CLASS[kind].from_config(config)
    _perturb_all(model)
    model.to(dtype)  # not from_config's dtype argument: it is torch_dtype= in 4.x and dtype= in 5.x
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(str(directory))
    build_tokenizer(kind).save_pretrained(str(directory))
    _portable_tokenizer_class(directory)
    return directory


def _portable_tokenizer_class(directory: Path) -> None:
    """transformers 5 saves tokenizer_class "TokenizersBackend", a name 4.x cannot load; the 4.x
    name "PreTrainedTokenizerFast" is an alias of that class in 5.x, so a directory built under
    either version loads under both."""
    path = directory / "tokenizer_config.json"
    settings = json.loads(path.read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _perturb_all(model: torch.nn.Module) -> None:
    """Add seeded noise to every parameter: initialisation leaves biases at 0 and norms at 1, and a
    tensor loaded under the wrong name would go unnoticed if many tensors were equal."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():  # tied weights come once
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            parameter.add_(0.02 * noise.to(parameter.dtype))


def build_tokenizer(kind: str) -> transformers.PreTrainedTokenizerFast:
    """A fast tokenizer for ``kind``: BERT's [CLS]/[SEP] WordPiece, else a byte-level BPE trained
    here on the word list, with ``<s>`` prepended.

    Why byte-level BPE in Qwen2's exact layout (its split regex, ByteLevel without regex, NFC): under
    transformers 5, AutoTokenizer ignores tokenizer_class for model types it distrusts (qwen2, phi3)
    and rebuilds Qwen2Tokenizer from the vocabulary and merges alone; a word-level tokenizer then
    silently drops every word. This layout survives that rebuild token for token."""
    if kind == "bert":
        return _bert_tokenizer()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[PAD, UNK, BOS, EOS],
                                  initial_alphabet=[], show_progress=False)
    tokenizer.train_from_iterator([" ".join(WORDS)] * 4, trainer=trainer)
    bos = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos)])
    # model_input_names: no token_type_ids, which decoder forwards do not take
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        model_input_names=["input_ids", "attention_mask"])


def _bert_tokenizer() -> transformers.PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + WORDS
    tokens += [f"w{i}" for i in range(VOCAB_SIZE - len(tokens))]
    ids = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]")


def sample_texts(count: int = 8, words: int = 16, seed: int = 0) -> list[str]:
    """``count`` seeded calibration texts of ``words`` vocabulary words each."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]


class ZooCache:
    """Tiny model directories built on first use under ``root``, ``layers`` blocks each (GPT-2's
    config calls it ``n_layer``), one per kind and set of config overrides: a module-scoped
    fixture returns ``ZooCache(tmp_path_factory.mktemp(...), LAYERS).get``."""

    def __init__(self, root: Path, layers: int) -> None:
        self.root, self.layers, self.made = Path(root), layers, {}

    def get(self, kind: str, **overrides) -> Path:
        key = repr((kind, sorted(overrides.items())))
        if key not in self.made:
            depth = {"n_layer": self.layers} if kind == "gpt2" else {"num_hidden_layers": self.layers}
            self.made[key] = build_model_dir(kind, self.root / f"{kind}-{len(self.made)}", **{**depth, **overrides})
        return self.made[key]


def load(directory: Path, kind: str = "llama"):
    """The model saved in ``directory``, in eval mode, by the kind's auto class."""
    return AUTO_CLASS[kind].from_pretrained(str(directory)).eval()
