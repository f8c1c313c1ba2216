"""Wrong registry entries fail at load with one line naming the entry and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from aiprod.core.errors import ConfigError, GenerationFailed
from aiprod.core.registry import Registry
from aiprod.engine import load_pipeline
from aiprod.engine.common import oom_guard

from .conftest import write_models_toml


def _entry(tmp_path: Path, body: str) -> Registry:
    return write_models_toml(tmp_path / "models.toml", body, default="m")


def _copy_without(tmp_path: Path, model_dir: Path, component: str) -> Registry:
    """Entry "m" on a copy of the tiny LTX-Video folder with one component folder removed."""
    shutil.copytree(model_dir / "ltxv", tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / component)
    return _entry(tmp_path, '[[models]]\nid = "m"\nfamily = "ltxv"\npath = "copy"\n')


def _load_error(registry: Registry) -> str:
    with pytest.raises(ConfigError) as err:
        load_pipeline(registry.get("m"), "cpu")
    msg = err.value.message
    assert "\n" not in msg and "'m'" in msg
    return msg


@pytest.mark.parametrize("family", ["ltxv", "ltx2", "builtin"])
def test_missing_folder(tmp_path: Path, family: str) -> None:
    reg = _entry(tmp_path, f'[[models]]\nid = "m"\nfamily = "{family}"\npath = "nowhere"\n')
    msg = _load_error(reg)
    assert f"{tmp_path / 'nowhere'} does not exist" in msg and "models.toml" in msg
    if family == "builtin":  # an error too (it fell back to random weights before issue 31)
        assert "aiprod train" in msg and "options.tiny_seed = 0" in msg


@pytest.mark.parametrize("family", ["ltxv", "builtin"])
def test_no_path(tmp_path: Path, family: str) -> None:
    reg = _entry(tmp_path, f'[[models]]\nid = "m"\nfamily = "{family}"\n')
    msg = _load_error(reg)
    assert "no path set" in msg
    assert ("options.tiny_seed" in msg) == (family == "builtin")


def test_missing_component(tmp_path: Path, model_dir: Path) -> None:
    msg = _load_error(_copy_without(tmp_path, model_dir, "vae"))
    assert "no vae found" in msg and "components.vae" in msg


@pytest.mark.parametrize(
    ("folder", "family", "right"), [("ltxv", "ltx2", "ltxv"), ("ltx2", "ltxv", "ltx2")]
)
def test_wrong_family_names_the_right_one(
    tmp_path: Path, model_dir: Path, folder: str, family: str, right: str
) -> None:
    reg = _entry(
        tmp_path, f'[[models]]\nid = "m"\nfamily = "{family}"\npath = "{model_dir / folder}"\n'
    )
    assert f"set family = '{right}'" in _load_error(reg)


def test_corrupt_weights(tmp_path: Path, model_dir: Path) -> None:
    shutil.copytree(model_dir / "ltxv", tmp_path / "copy")
    for f in (tmp_path / "copy" / "transformer").glob("*.safetensors"):
        f.write_bytes(b"garbage")
    reg = _entry(tmp_path, '[[models]]\nid = "m"\nfamily = "ltxv"\npath = "copy"\n')
    assert "cannot load the transformer" in _load_error(reg)


def test_two_stage_default_without_upsampler(tmp_path: Path, model_dir: Path) -> None:
    assert "no latent upsampler" in _load_error(
        _copy_without(tmp_path, model_dir, "latent_upsampler")
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ('attention_backend = "warp-drive"', "attention_backend 'warp-drive' is unknown"),
        ("call_kwargs = { bogus = 1 }", "unknown key(s) bogus"),
    ],
)
def test_bad_options(tmp_path: Path, model_dir: Path, options: str, match: str) -> None:
    reg = _entry(
        tmp_path,
        f'[[models]]\nid = "m"\nfamily = "ltx2"\npath = "{model_dir / "ltx2"}"\n'
        f"[models.options]\n{options}\n",
    )
    assert match in _load_error(reg)


def test_missing_lora(tmp_path: Path, model_dir: Path) -> None:
    reg = _entry(
        tmp_path,
        f'[[models]]\nid = "m"\nfamily = "ltx2"\npath = "{model_dir / "ltx2"}"\n'
        '[models.components]\ndistilled_lora = "nope.safetensors"\n',
    )
    assert "distilled_lora" in _load_error(reg)


def test_cuda_device_without_cuda(builtin_entry) -> None:  # noqa: ANN001
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_pipeline(builtin_entry, "cuda")


def test_out_of_memory_becomes_a_clear_job_error() -> None:
    with pytest.raises(GenerationFailed, match="out of memory while generating 64x64") as err:
        with oom_guard("64x64x9 on 'm'", hint="lower width/height"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
    assert "lower width/height" in err.value.message
    with pytest.raises(ValueError):  # other errors pass through untouched
        with oom_guard("x", hint="y"):
            raise ValueError("not memory")


def test_file_checks_run_without_torch(tmp_path: Path, model_dir: Path) -> None:
    import subprocess
    import sys

    shutil.copytree(model_dir / "ltx2", tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "vocoder")
    (tmp_path / "models.toml").write_text(
        'default = "good"\n'
        f'[[models]]\nid = "good"\nfamily = "ltx2"\npath = "{model_dir / "ltx2"}"\n'
        '[[models]]\nid = "bad"\nfamily = "ltx2"\npath = "copy"\n'
    )
    code = (
        "import sys\n"
        "from aiprod.core.errors import ConfigError\n"
        "from aiprod.core.registry import load_registry\n"
        "from aiprod.engine import check_model_files\n"
        f"reg = load_registry({str(tmp_path / 'models.toml')!r})\n"
        "check_model_files(reg.get('good'))\n"
        "try:\n"
        "    check_model_files(reg.get('bad'))\n"
        "except ConfigError as e:\n"
        "    print(e.message)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "model 'bad': no vocoder found" in out.stdout
