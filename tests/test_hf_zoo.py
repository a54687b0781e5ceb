"""The tiny model zoo (tests/hf_zoo.py) under whichever transformers is installed; CI runs this file
under the lowest supported 4.x (.venv) and under what `pip install pruneplug[hf]` gets (.venv-hf).
Every kind builds, loads with no missing or unexpected keys, runs on its tokenizer's output, and
the name mapping of docs/architectures.md covers its checkpoint exactly."""

import importlib.metadata
import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install pruneplug[hf])")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install pruneplug[hf])")
from safetensors.torch import load_file  # noqa: E402

import hf_zoo  # noqa: E402

pytestmark = pytest.mark.hf

DOC = Path(__file__).resolve().parent.parent / "docs" / "architectures.md"
TRANSFORMERS_MAJOR = int(importlib.metadata.version("transformers").split(".")[0])
MOE = {"mixtral", "qwen2_moe"}


@pytest.fixture(scope="module", params=hf_zoo.KINDS)
def built(request, tmp_path_factory):
    """(kind, model directory), built once per kind."""
    kind = request.param
    return kind, hf_zoo.build_model_dir(kind, tmp_path_factory.mktemp(kind))


@pytest.fixture(scope="module")
def doc_snippet():
    """The name-mapping snippet of docs/architectures.md, executed: what the doc shows is what is
    tested here."""
    text = DOC.read_text()
    match = re.search(r"<!-- snippet: checkpoint_tensors -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"{DOC}: the snippet block is missing"
    namespace = {}
    exec(compile(match.group(1), str(DOC), "exec"), namespace)
    return namespace["checkpoint_tensors"]


def _load(kind, directory):
    model, info = hf_zoo.AUTO_CLASS[kind].from_pretrained(str(directory), output_loading_info=True)
    return model.eval(), info


def _skeleton(kind, directory):
    """The model as the block-by-block pipeline builds it: config only, on the meta device."""
    config = transformers.AutoConfig.from_pretrained(str(directory))
    with torch.device("meta"):
        return hf_zoo.AUTO_CLASS[kind].from_config(config)


def test_the_directory_has_config_weights_and_tokenizer(built):
    kind, directory = built
    config = transformers.AutoConfig.from_pretrained(str(directory))
    assert config.model_type == kind
    head = "ForSequenceClassification" if kind == "bert" else ("ForCausalLM", "LMHeadModel")
    assert len(config.architectures) == 1 and config.architectures[0].endswith(head)
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
    sizes = [getattr(config, name) for name in ("hidden_size", "n_embd") if hasattr(config, name)]
    assert 32 <= sizes[0] <= 64 and config.vocab_size <= 256


@pytest.mark.parametrize("kind", ["llama", "mixtral"])
def test_a_bfloat16_build_stores_and_records_bfloat16(kind, tmp_path):
    directory = hf_zoo.build_model_dir(kind, tmp_path, dtype=torch.bfloat16)
    assert {tensor.dtype for tensor in load_file(str(directory / "model.safetensors")).values()} == {torch.bfloat16}
    config = json.loads((directory / "config.json").read_text())
    assert (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"  # 5.x: dtype, 4.x: torch_dtype


def test_the_build_is_seeded(built, tmp_path):
    kind, directory = built
    again = hf_zoo.build_model_dir(kind, tmp_path / kind)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (directory / name).read_bytes(), name


def test_loads_with_no_missing_or_unexpected_keys(built):
    kind, directory = built
    _, info = _load(kind, directory)
    assert set(info) >= {"missing_keys", "unexpected_keys"}, info  # the report exists in this version
    assert {key: value for key, value in info.items() if value} == {}


def test_forward_on_tokenizer_output(built):
    kind, directory = built
    model, _ = _load(kind, directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    texts = hf_zoo.sample_texts(count=8, words=16)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    # every word is a token sequence, nothing dropped or unknown (5.x rebuilds some tokenizers)
    assert [tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"]] == texts
    assert tokenizer.unk_token_id not in batch["input_ids"]
    assert batch["input_ids"].max() < model.config.vocab_size
    with torch.no_grad():
        logits = model(**batch).logits
    expected = (8, 2) if kind == "bert" else (8, batch["input_ids"].shape[1], model.config.vocab_size)
    assert tuple(logits.shape) == expected
    assert torch.isfinite(logits).all()


def test_the_snippet_names_every_checkpoint_tensor_once_from_a_meta_skeleton(built, doc_snippet):
    kind, directory = built
    checkpoint = load_file(str(directory / "model.safetensors"))
    mapping = doc_snippet(_skeleton(kind, directory))
    names = [name for tensors in mapping.values() for name in tensors]
    assert len(names) == len(set(names)), "a checkpoint tensor claimed twice"
    assert sorted(names) == sorted(checkpoint)
    for tensors in mapping.values():
        for name, tensor in tensors.items():
            assert tensor.shape == checkpoint[name].shape, name


def test_the_snippet_gives_the_checkpoint_values_from_a_loaded_model(built, doc_snippet):
    """Not only the names: the tensors the snippet returns are what save_pretrained writes, so the
    lead's writer can use it to turn pruned module tensors into checkpoint tensors."""
    kind, directory = built
    checkpoint = load_file(str(directory / "model.safetensors"))
    model, _ = _load(kind, directory)
    for tensors in doc_snippet(model).values():
        for name, tensor in tensors.items():
            assert torch.equal(tensor, checkpoint[name]), name


def test_module_names_differ_from_checkpoint_names_only_for_fused_experts_in_5(built, doc_snippet):
    """The table of docs/architectures.md in one assertion: transformers 4 module names are the
    checkpoint names; 5 fuses the experts of the MoE kinds into 3-D parameters (and renames
    Mixtral's block_sparse_moe to mlp), nothing else."""
    kind, directory = built
    model = _skeleton(kind, directory)
    renamed = {name for name, tensors in doc_snippet(model).items() if list(tensors) != [name]}
    three_d = {name for name, parameter in model.named_parameters() if parameter.dim() == 3}
    if TRANSFORMERS_MAJOR >= 5 and kind in MOE:
        assert three_d and three_d <= renamed
        assert all(".experts." in name or kind == "mixtral" for name in renamed), renamed
    else:
        assert renamed == set() and three_d == set()


@pytest.mark.skipif(TRANSFORMERS_MAJOR < 5, reason="transformers 4 keeps one nn.Linear per expert")
@pytest.mark.parametrize("kind, gate, up, down", [("mixtral", "w1", "w3", "w2"),
                                                  ("qwen2_moe", "gate_proj", "up_proj", "down_proj")])
def test_fused_expert_layout(kind, gate, up, down, tmp_path):
    """The layout docs/architectures.md states: gate_up_proj[e] = cat(gate_e, up_e) along the
    output rows, down_proj[e] = down_e, each an nn.Linear weight (out, in)."""
    directory = hf_zoo.build_model_dir(kind, tmp_path)
    checkpoint = load_file(str(directory / "model.safetensors"))
    model, _ = _load(kind, directory)
    moe = "block_sparse_moe" if kind == "mixtral" else "mlp"
    experts = model.model.layers[0].mlp.experts
    for e in range(experts.gate_up_proj.shape[0]):
        stored = f"model.layers.0.{moe}.experts.{e}."
        fused = torch.cat([checkpoint[stored + gate + ".weight"], checkpoint[stored + up + ".weight"]])
        assert torch.equal(experts.gate_up_proj[e], fused)
        assert torch.equal(experts.down_proj[e], checkpoint[stored + down + ".weight"])


def test_architecture_specifics(tmp_path):
    """What each kind is in the zoo for: GQA and tied embeddings (llama), Conv1D (gpt2), a task head
    under a base-model prefix (bert)."""
    llama = transformers.AutoConfig.from_pretrained(str(hf_zoo.build_model_dir("llama", tmp_path / "llama")))
    assert llama.num_key_value_heads < llama.num_attention_heads and llama.tie_word_embeddings
    assert "lm_head.weight" not in load_file(str(tmp_path / "llama" / "model.safetensors"))  # stored once

    gpt2, _ = _load("gpt2", hf_zoo.build_model_dir("gpt2", tmp_path / "gpt2"))
    assert type(gpt2.transformer.h[0].mlp.c_fc).__name__ == "Conv1D"
    assert gpt2.transformer.h[0].mlp.c_fc.weight.shape == (32, 64)  # (in, out): transposed to nn.Linear

    names = set(load_file(str(hf_zoo.build_model_dir("bert", tmp_path / "bert") / "model.safetensors")))
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= names
    assert all(name.startswith(("bert.", "classifier.")) for name in names)


def test_the_doc_table_covers_every_kind():
    table = DOC.read_text()
    for kind in hf_zoo.KINDS:
        assert re.search(rf"^\| `{kind}` \|", table, re.M), kind
