"""Loading the model that ``kvcore eval`` measures: a Hugging Face folder, a GGUF file, or
the embedded SmolLM2-135M-Instruct.

A GGUF file is dequantized by transformers on every load (about 15-50 s for the 135M
model on a small CPU), so it is converted once into a safetensors folder under the
kvcore cache folder (``$KVCORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/kvcore``, else
``~/.cache/kvcore``); later runs load that folder in well under a second. The converted
weights are float32, exactly the GGUF's dequantized values.
"""
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import assets
from .errors import DeviceError, ModelPathError


@dataclass
class LoadedModel:
    """A causal LM ready for eval, with its tokenizer and where it came from."""
    model: torch.nn.Module
    tokenizer: object
    name: str
    source: str        # the folder or file it was loaded from
    load_seconds: float


def cache_root() -> Path:
    """Folder where converted models are kept."""
    if os.environ.get("KVCORE_CACHE_DIR"):
        return Path(os.environ["KVCORE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvcore"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an explicit device is checked."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"--device {name!r} is not a device name ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def _converted_folder(gguf: Path, default: bool) -> Path:
    if default:
        key = "smollm2-135m-instruct-q4_1"
    else:
        st = gguf.stat()
        digest = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        key = f"{gguf.stem}-{digest}"
    return cache_root() / "models" / key


def _is_model_folder(folder: Path) -> bool:
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return (folder / "config.json").is_file() and has_weights


def convert_gguf(gguf: Path, out: Path, log=print) -> Path:
    """Dequantize a GGUF model once and save it as a safetensors folder (float32) with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"kvcore eval: converting {gguf.name} once to {out} (later runs load it directly)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 after dequantization; drop the GGUF marker so that
    # save_pretrained writes them as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _model_folder_for(path, log) -> tuple:
    """(folder to load, display name) for ``--model`` (None: the embedded default)."""
    if path is None:
        gguf = assets.default_model_file()
        folder = _converted_folder(gguf, default=True)
        if not _is_model_folder(folder):
            convert_gguf(gguf, folder, log)
        return folder, assets.MODEL_NAME
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelPathError(f"--model {path}: no such file or folder (give a Hugging Face model folder "
                             f"or a .gguf file)")
    if p.is_dir():
        if not (p / "config.json").is_file():
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                p = ggufs[0]
            else:
                raise ModelPathError(f"--model {path}: this folder has no config.json, so it is not a Hugging Face "
                                     f"model folder" + (f" (it holds {len(ggufs)} .gguf files: pass one)" if ggufs else ""))
        else:
            return p, p.name
    if p.suffix.lower() != ".gguf":
        raise ModelPathError(f"--model {path}: a file must be a .gguf model (or give a Hugging Face model folder)")
    folder = _converted_folder(p, default=False)
    if not _is_model_folder(folder):
        try:
            convert_gguf(p, folder, log)
        except Exception as e:  # noqa: BLE001  (any failure here means: not a usable GGUF model)
            raise ModelPathError(f"--model {path}: could not read it as a GGUF model ({type(e).__name__}: {e})") from None
    return folder, p.stem


def load_model(path=None, device="cpu", dtype=torch.bfloat16, log=print) -> LoadedModel:
    """Load a causal LM and its tokenizer for eval (offline: local files only).

    Args:
        path: a Hugging Face model folder, a ``.gguf`` file, or None for the embedded
            SmolLM2-135M-Instruct.
        device: where the model runs.
        dtype: the model's (and so the uncompressed cache's) dtype.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    folder, name = _model_folder_for(path, log)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelPathError(f"--model {path or folder}: could not load a causal language model from {folder} "
                             f"({type(e).__name__}: {e})") from None
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tok, name=name, source=str(folder),
                       load_seconds=time.perf_counter() - t0)
