"""A model without weights: the transformers classes built from ``config.json``, every parameter on
the meta device, and the map from its parameter names to the checkpoint's tensor names.

Why: the stream holds one block's weights at a time. The skeleton gives it the model's own forward
code (attention, rotary embeddings, MoE routing) without allocating a single weight; a block's
parameters are materialised from the checkpoint when the stream reaches it
(:meth:`Skeleton.load`) and sent back to meta when it is done (:meth:`Skeleton.unload`).

Buffers stay real: they are small and most are not in the checkpoint (rotary ``inv_freq`` is
computed by the module's constructor), so only ``register_parameter`` is diverted to meta while the
model is built (:func:`parameters_on_meta`).

Names. A checkpoint written by ``save_pretrained`` of a task model (``BertForMaskedLM``) stores the
base model's tensors under the base-model prefix (``bert.``); a checkpoint of a base model, or one
whose ``config.json`` has no ``architectures``, stores them without. transformers' own rules decide:
the class's ``base_model_prefix``, and the load-time key renames it declares
(``_checkpoint_conversion_mapping`` in 4.x, ``key_mapping``). :func:`map_names` tries, for each
parameter, its own name, the name with the prefix added, and the name with the prefix removed, each
through those renames; a parameter with no tensor is an error naming it (a tied parameter is
served by the tensor of the parameter it is tied to).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from pruneplug.checkpoint.formats import Checkpoint, open_checkpoint
from pruneplug.errors import CheckpointError

#: Parameters that never need weights for calibration: the output head (when not selected).
HEAD_NAMES = ("lm_head.weight", "lm_head.bias")


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with every parameter on the meta device and every buffer real."""
    import torch

    original = torch.nn.Module.register_parameter

    def register(module: Any, name: str, param: Any) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def _auto_class(config: Any) -> Any:
    """The transformers class of the checkpoint: the config's first ``architectures`` entry when
    transformers knows it, else the base model (``AutoModel``)."""
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def _renames(cls: Any) -> list[tuple[re.Pattern, str]]:
    """The load-time key renames a transformers class declares (checkpoint name -> module name)."""
    mapping = getattr(cls, "_checkpoint_conversion_mapping", None) or {}
    return [(re.compile(pattern), repl) for pattern, repl in mapping.items()]


@dataclass
class Skeleton:
    """The weightless model, its checkpoint and the name map (see the module docstring)."""

    model: Any
    checkpoint: Checkpoint
    names: dict[str, str]  # parameter name -> checkpoint tensor name
    model_dir: Path
    config: Any
    tied: dict[str, str] = field(default_factory=dict)  # parameter name -> the name it is tied to

    def load_where(self, wanted: Callable[[str], bool], device: Any, dtype: Any) -> int:
        """Materialise every parameter whose name satisfies ``wanted`` from the checkpoint, on
        ``device`` in ``dtype`` (floating tensors; others keep theirs); tied parameters get the
        same tensor. Returns the bytes allocated."""
        import torch

        allocated = 0
        loaded: dict[str, Any] = {}
        for name, owner, leaf in _parameters(self.model, ""):
            if not wanted(name) or owner._parameters[leaf].device.type != "meta":
                continue
            stored_as = self.names.get(name) or self.names.get(self.tied.get(name, ""))
            if stored_as is None:
                continue  # an untied output head the checkpoint does not store: never run
            if stored_as in loaded:  # tied: the very same parameter
                owner._parameters[leaf] = loaded[stored_as]
                continue
            tensor = to_torch(self.checkpoint.tensors[stored_as].array())
            want = dtype if tensor.is_floating_point() else tensor.dtype
            tensor = tensor.to(device=device, dtype=want, copy=True)
            if tuple(tensor.shape) != tuple(owner._parameters[leaf].shape):
                raise CheckpointError(f"{self.model_dir}: tensor {stored_as!r} has shape {list(tensor.shape)} but "
                                      f"the model's parameter {name!r} has {list(owner._parameters[leaf].shape)}")
            param = torch.nn.Parameter(tensor, requires_grad=False)
            owner._parameters[leaf] = loaded[stored_as] = param
            allocated += tensor.numel() * tensor.element_size()
        return allocated

    def unload_where(self, wanted: Callable[[str], bool]) -> None:
        """Send the parameters whose name satisfies ``wanted`` back to the meta device and free them."""
        _to_meta((owner, leaf) for name, owner, leaf in _parameters(self.model, "") if wanted(name))
        release_memory()

    @staticmethod
    def unload(module: Any) -> None:
        """Send every parameter of ``module`` back to the meta device and free its memory."""
        _to_meta((owner, leaf) for _, owner, leaf in _parameters(module, ""))
        release_memory()


def release_memory() -> None:
    """Give freed memory back to the operating system: after a block's tensors are freed, glibc keeps
    much of it in its heap (the mmap threshold grows with every large free), and the process's
    resident memory would creep up block after block (measured: +4.5 MiB a block on a 512-wide
    Llama, +500 MiB over 24 blocks of a 1024-wide one; flat with this). No-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _to_meta(slots: Any) -> None:
    import torch

    for owner, leaf in list(slots):
        p = owner._parameters[leaf]
        if p.device.type != "meta":
            owner._parameters[leaf] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)


def _parameters(module: Any, prefix: str) -> Iterator[tuple[str, Any, str]]:
    """(full name, owning module, leaf name) of every parameter slot under ``module``, each once."""
    seen: set[int] = set()
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for leaf, p in list(mod._parameters.items()):
            if p is None:
                continue
            key = id(mod), leaf
            if key in seen:
                continue
            seen.add(key)
            full = ".".join(part for part in (prefix, mod_name, leaf) if part)
            yield full, mod, leaf


def to_torch(array: np.ndarray) -> Any:
    """A torch tensor sharing a NumPy array's memory where it can (bfloat16 through int16)."""
    import torch

    if not array.flags.writeable:  # a read-only memory map: torch wants writable memory
        array = np.array(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def read_config(model_dir: Path) -> Any:
    """The transformers config of ``model_dir``, as a :class:`CheckpointError` naming the file when
    transformers cannot read it."""
    try:
        import transformers
    except ImportError:
        raise CheckpointError('calibrated pruning of a model directory needs transformers: pip install '
                              '"pruneplug[hf]"') from None
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return transformers.AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad config
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: transformers cannot read this config ({type(exc).__name__}: {first})") from None


def build_skeleton(model_dir: str | Path) -> Skeleton:
    """The weightless model of a Hugging Face model directory, and its name map.

    Example::

        skel = build_skeleton("SmolLM2-135M")
        skel.names["model.layers.0.mlp.down_proj.weight"]   # 'model.layers.0.mlp.down_proj.weight'
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    checkpoint = open_checkpoint(model_dir)
    cls = _auto_class(config)
    try:
        with parameters_on_meta():
            if cls.__module__.startswith("transformers.models.auto"):
                model = cls.from_config(config)
            else:
                model = cls(config)
    except Exception as exc:  # noqa: BLE001 - a config transformers cannot build
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{model_dir}: transformers cannot build {cls.__name__} from config.json "
                              f"({type(exc).__name__}: {first})") from None
    model.eval()
    if hasattr(model, "tie_weights"):  # transformers 5.0 builds a skeleton untied
        model.tie_weights()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # the stream replays blocks: a cache would keep growing
    names, tied = map_names(model, checkpoint, model_dir, _renames(type(model)))
    return Skeleton(model, checkpoint, names, model_dir, config, tied)


def map_names(model: Any, checkpoint: Checkpoint, where: Path,
              renames: list[tuple[re.Pattern, str]] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """parameter name -> checkpoint tensor name for every parameter of ``model``; and the tied ones
    (a parameter object met under a second name) -> the first name. Fused MoE experts
    (transformers 5) are taken apart here (:mod:`pruneplug.stream.experts`), so every parameter
    left maps to exactly one tensor."""
    from pruneplug.stream.experts import unfuse_experts

    stored = list(checkpoint.tensors)
    by_module_name: dict[str, str] = {}
    for key in stored:  # the checkpoint names as transformers 4 would rename them on loading
        renamed = key
        for pattern, repl in renames:
            renamed, n = pattern.subn(repl, renamed)
            if n:
                break
        by_module_name.setdefault(renamed, key)
    prefix = getattr(model, "base_model_prefix", "") or ""
    names: dict[str, str] = {}
    fused: dict[str, list[str]] = {}
    tied: dict[str, str] = {}
    first_name: dict[int, str] = {}
    missing = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            tied[name] = first_name[id(param)]
            continue
        first_name[id(param)] = name
        saved = saved_names(model, name, param)
        matches = [_match(n, prefix, by_module_name) for n in saved]
        if None in matches:
            missing.append(name)
        elif len(matches) == 1:
            names[name] = matches[0]
        else:
            fused[name] = matches
    for name, target in tied.items():  # a tie's first name may be the one stored under the second
        if target not in names and target not in fused:
            match = _match(name, prefix, by_module_name)
            if match is not None:
                names[target] = match
                missing = [n for n in missing if n != target]
    missing = [n for n in missing if n not in HEAD_NAMES]
    if missing:
        sample = ", ".join(stored[:3])
        raise CheckpointError(f"{where}: the model's parameter {missing[0]!r} (and {len(missing) - 1} more) has no "
                              f"tensor in the checkpoint (tensors look like: {sample}); is config.json the "
                              "checkpoint's own?")
    if fused:
        names.update(unfuse_experts(model, fused))
    return names, tied


def saved_names(model: Any, name: str, param: Any) -> list[str]:
    """The checkpoint name(s) ``save_pretrained`` gives parameter ``name``: transformers 5's reverse
    conversion (renames such as mixtral's ``mlp`` -> ``block_sparse_moe``, fused experts -> one
    tensor per expert and part); the name itself under transformers 4."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return [name]
    try:
        return list(revert_weight_conversion(model, {name: param}))
    except Exception:  # noqa: BLE001 - a conversion transformers cannot revert alone: the plain name
        return [name]


def _match(name: str, prefix: str, by_module_name: Mapping[str, str]) -> str | None:
    candidates = [name]
    if prefix:
        if name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1:])
        else:
            candidates.append(f"{prefix}.{name}")
    for candidate in candidates:
        if candidate in by_module_name:
            return by_module_name[candidate]
    return None
