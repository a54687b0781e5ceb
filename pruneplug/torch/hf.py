"""Hugging Face helpers of the calibration CLI (extra ``hf``): calibration texts, tokenized batches,
local model directories. Nothing here downloads anything: models are local directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pruneplug.errors import CalibrationError, CheckpointError


def load_texts(path: str | Path, samples: int | None = None) -> list[str]:
    """Calibration texts from ``path``: a text file with one sample per line, or ``.jsonl`` with a
    ``"text"`` field per line. UTF-8 (a byte-order mark is skipped), and UTF-16 when the file starts
    with its byte-order mark. Blank lines are skipped; the first ``samples`` are kept (all when
    None). A file with no text, bytes that are not text, a statistics file given as texts: a
    :class:`CalibrationError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration texts {str(path)!r}: no such file")
    data = path.read_bytes()
    if data[:8] and _looks_like_safetensors(path):
        raise CalibrationError(f"calibration texts {str(path)!r}: this is a safetensors file, not text (a statistics "
                               "file goes to `prune --calibration STATS` with a checkpoint, not to calibrate)")
    text = _decode(data, path)
    texts: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CalibrationError(f"{path}:{number}: not a JSON line ({exc})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CalibrationError(f"{path}:{number}: expected an object with a string field \"text\"")
            line = record["text"]
        if line.strip():
            texts.append(line)
        if samples is not None and len(texts) >= samples:
            break
    if not texts:
        raise CalibrationError(f"calibration texts {str(path)!r}: the file holds no text")
    return texts


def _looks_like_safetensors(path: Path) -> bool:
    from pruneplug.calibration import is_safetensors_file

    return is_safetensors_file(path)


def _decode(data: bytes, path: Path) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"calibration texts {str(path)!r}: not {encoding.replace('-sig', '')} text (byte "
                               f"{exc.start}: {data[exc.start:exc.start + 1]!r}); save the texts as UTF-8") from None


def text_batches(tokenizer: Any, texts: list[str], seq_len: int = 128, batch_size: int = 16,
                 where: str = "the calibration texts") -> list[dict]:
    """Tokenized batches (``input_ids``, ``attention_mask``; padding excluded by the mask), each
    text truncated to ``seq_len`` tokens. Texts that tokenize to nothing are an error."""
    if tokenizer.pad_token is None:  # decoders often have none; the mask excludes it anyway
        tokenizer.pad_token = tokenizer.eos_token
    batches = []
    tokens = 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=seq_len)
        tokens += int(enc["attention_mask"].sum())
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    if tokens == 0:
        raise CalibrationError(f"{where}: the texts tokenize to no tokens")
    return batches


def load_tokenizer(model_dir: str | Path) -> Any:
    """The tokenizer saved in a local model directory; a :class:`CheckpointError` naming the
    directory when there is none transformers can load."""
    try:
        import transformers
    except ImportError:
        raise CheckpointError('calibration of a model directory needs transformers: pip install "pruneplug[hf]"') from None
    try:
        return transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a missing tokenizer
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{model_dir}: transformers cannot load a tokenizer from this directory "
                              f"({type(exc).__name__}: {first})") from None


def load_model(model_dir: str | Path, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local Hugging Face directory (``AutoModelForCausalLM`` when the
    config names a causal-LM architecture, else ``AutoModel``). A directory transformers cannot
    load is a :class:`CheckpointError` naming it."""
    try:
        import transformers
    except ImportError:
        raise CheckpointError('loading a model directory needs transformers: pip install "pruneplug[hf]"') from None
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    try:
        config = transformers.AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        archs = getattr(config, "architectures", None) or []
        auto = transformers.AutoModelForCausalLM if any(a.endswith("ForCausalLM") for a in archs) else transformers.AutoModel
        kwargs = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = auto.from_pretrained(str(model_dir), **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad directory
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{model_dir}: transformers cannot load this model directory "
                              f"({type(exc).__name__}: {first})") from None
    model.eval()
    return model, tokenizer
