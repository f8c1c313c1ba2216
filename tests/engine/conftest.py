"""Engine test fixtures: models are built once per session (they are the slow part)."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from aiprod.core.registry import ModelEntry, Registry, load_registry

# the tiny random built-in model (options.tiny_seed), two-stage at 64x64x9: what the
# benchmarks' tests run
TINY = """[[models]]
id = "tiny"
family = "builtin"
version = "tiny-1"

[models.defaults]
width = 64
height = 64
num_frames = 9
num_inference_steps = 2
two_stage = true

[models.options]
refine_steps = 1
tiny_seed = 0
"""


def write_models_toml(path: Path, body: str, default: str) -> Registry:
    path.write_text(f'default = "{default}"\n\n{body}')
    return load_registry(path)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def png_bytes(width: int = 48, height: int = 40) -> bytes:
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 5 % 256, yy * 6 % 256, np.full_like(xx, 200)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def builtin_entry() -> ModelEntry:
    """The shipped registry's default entry."""
    entry = load_registry().default_entry
    assert entry.family == "builtin"
    return entry


def tiny_builtin(entry: ModelEntry, seed: int = 0) -> ModelEntry:
    """``entry`` serving the tiny random built-in model (``options.tiny_seed``) instead of its
    trained weights."""
    opts = entry.options.model_copy(update={"tiny_seed": seed})
    return entry.model_copy(update={"path": None, "options": opts})


@pytest.fixture(scope="session")
def builtin_pipe(builtin_entry: ModelEntry):  # noqa: ANN201
    """The shipped entry's settings on the tiny random built-in model (fast, any machine)."""
    from aiprod.engine import load_pipeline

    return load_pipeline(tiny_builtin(builtin_entry), "cpu")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random LTX-Video and LTX-2 models saved in the diffusers layout, + a distilled LoRA."""
    import copy

    from diffusers import LTX2Pipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from aiprod.engine.tiny import save_components, tiny_ltx2_components, tiny_ltxv_components

    root = tmp_path_factory.mktemp("models")
    save_components(tiny_ltxv_components(seed=1), root / "ltxv")
    comps = tiny_ltx2_components(seed=1)
    save_components(comps, root / "ltx2")
    transformer = copy.deepcopy(comps["transformer"])
    transformer.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,  # random, so the adapter visibly changes the output
        )
    )
    LTX2Pipeline.save_lora_weights(
        root / "lora", transformer_lora_layers=get_peft_model_state_dict(transformer)
    )
    return root


# The tiny models' request defaults (one [models.defaults] table; an entry may add keys).
DEFAULTS_TOML = """[models.defaults]
width = 64
height = 32
num_frames = 9
fps = 12
num_inference_steps = 2
"""

MODELS_TOML = f"""
[[models]]
id = "tiny-ltxv"
family = "ltxv"
path = "ltxv"
dtype = "bfloat16"
{DEFAULTS_TOML}guidance_scale = 3.0
two_stage = true

[[models]]
id = "tiny-ltx2"
family = "ltx2"
path = "ltx2"
{DEFAULTS_TOML}guidance_scale = 3.0
two_stage = true

[[models]]
id = "tiny-ltx2-lora"
family = "ltx2"
path = "ltx2"
[models.components]
distilled_lora = "lora/pytorch_lora_weights.safetensors"
{DEFAULTS_TOML}two_stage = true

[[models]]
id = "tiny-ltx2-nolora"
family = "ltx2"
path = "ltx2"
[models.options]
distilled = true
{DEFAULTS_TOML}two_stage = true
"""


@pytest.fixture(scope="session")
def registry(model_dir: Path) -> Registry:
    return write_models_toml(model_dir / "models.toml", MODELS_TOML, default="tiny-ltxv")


@pytest.fixture(scope="session")
def pipes(registry: Registry) -> dict:
    """Loaded pipelines by model id, loaded on first use and kept for the session."""
    from aiprod.engine import load_pipeline

    class Lazy(dict):
        def __missing__(self, key: str):  # noqa: ANN204
            self[key] = load_pipeline(registry.get(key), "cpu")
            return self[key]

    return Lazy()
