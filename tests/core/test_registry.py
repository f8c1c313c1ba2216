"""models.toml parsing and request resolution (torch-free)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiprod.core.errors import ConfigError, InvalidRequest
from aiprod.core.registry import default_models_file, load_registry


def test_default_registry_ships_the_builtin_model() -> None:
    reg = load_registry()
    assert reg.source == default_models_file()
    entry = reg.default_entry
    assert (entry.id, entry.family, entry.dtype) == ("builtin", "builtin", "float32")
    d = entry.defaults
    assert (d.width, d.height, d.num_frames, d.fps) == (160, 160, 25, 24)
    assert entry.path is not None and entry.path.is_absolute()
    assert "path" not in entry.public_dict()


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    f = tmp_path / "models.toml"
    f.write_text(
        'default = "m"\n[[models]]\nid = "m"\nfamily = "ltxv"\npath = "weights/m"\n'
        '[models.components]\nupsampler = "/abs/up"\n[models.options]\nrefine_strength = 0.5\n'
    )
    entry = load_registry(f).get("m")
    assert entry.path == (tmp_path / "weights" / "m").resolve()
    assert entry.components.upsampler == Path("/abs/up")
    assert entry.options.refine_strength == 0.5


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('default = "x"\n[[models]]\nid = "m"\nfamily = "ltxv"\n', "default model 'x'"),
        ('default = "m"\n[[models]]\nid = "m"\nfamily = "sora"\n', "family"),
        ('default = "m"\n[[models]]\nid = "m"\nfamily = "ltxv"\ncolour = 1\n', "colour"),
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "ltxv"\n[models.options]\n'
            "refine_strength = 2.0\n",
            "refine_strength",
        ),
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "ltx2"\n[models.options]\n'
            "guidance_min_sigma = 0.7\n",
            "LTX-2's guidance terms are set through options.call_kwargs",
        ),
        # each family's schema takes only its own knobs, and the refusal names the fix
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "ltx2"\n[models.options]\n'
            "candidates = 1\n",
            "options.candidates ranks stage-1 drafts .* family 'ltx2' has none: remove it",
        ),
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "ltxv"\n[models.options]\n'
            "distilled = true\n",
            "options.distilled selects LTX-2's distilled schedule; family 'ltxv' has none",
        ),
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "ltx2"\n[models.options]\n'
            'ltxv_pipeline = "classic"\n',
            "options.ltxv_pipeline picks the LTX-Video pipeline .*: remove it",
        ),
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "ltxv"\n[models.options]\n'
            "tiny_seed = 0\n",
            "options.tiny_seed serves the tiny random built-in model; family 'ltxv'",
        ),
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "ltxv"\n[models.components]\n'
            'verifier = "v"\n',
            "components.verifier is the built-in model's prompt verifier; family 'ltxv'",
        ),
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "builtin"\n[models.components]\n'
            'vocoder = "v"\n',
            "components.vocoder is a part of LTX-2 models; family 'builtin' has none",
        ),
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "builtin"\npath = "w"\n'
            "[models.options]\ntiny_seed = 0\n",
            "set either path .* or options.tiny_seed",
        ),
        (
            'default = "m"\n[[models]]\nid = "m"\nfamily = "builtin"\n[models.options]\n'
            "candidates = 9\n",
            "candidates",
        ),
        ("default = ", "not valid TOML"),
    ],
)
def test_bad_files_fail_with_one_line(tmp_path: Path, body: str, match: str) -> None:
    f = tmp_path / "models.toml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=match) as err:
        load_registry(f)
    assert "\n" not in err.value.message


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AIPROD_MODELS_FILE"):
        load_registry(tmp_path / "nope.toml")


def test_resolve_request_fills_defaults_and_names_bad_fields() -> None:
    entry = load_registry().default_entry
    out = entry.resolve_request({"prompt": "hi"})
    assert out["width"] == 160 and out["num_frames"] == 25 and out["seed"] is None
    for params, field, hint in [
        ({"width": 100}, "width", "try 96"),
        ({"num_frames": 24}, "num_frames", r"8\*k\+1 \(e.g. 25\)"),
        ({"height": 4096}, "height", "32..512"),
        ({"prompt": " "}, "prompt", "non-empty"),
    ]:
        with pytest.raises(InvalidRequest, match=hint) as err:
            entry.resolve_request({"prompt": "hi", **params})
        assert err.value.field == field
    with pytest.raises(InvalidRequest, match="unknown model 'nope'"):
        load_registry().get("nope")


def test_entries_are_typed_per_family(tmp_path: Path) -> None:
    from aiprod.core.registry import (
        BuiltinEntry,
        BuiltinOptions,
        LTX2Entry,
        LTXVEntry,
        ModelEntry,
    )

    f = tmp_path / "models.toml"
    f.write_text(
        'default = "a"\n'
        '[[models]]\nid = "a"\nfamily = "ltx2"\n[models.options]\ndistilled = true\n'
        '[[models]]\nid = "b"\nfamily = "ltxv"\n[models.options]\nguidance_min_sigma = 0.5\n'
        '[[models]]\nid = "c"\nfamily = "builtin"\n[models.options]\ncandidates = 2\n'
        "tiny_seed = 3\n"
    )
    reg = load_registry(f)
    a, b, c = (reg.get(i) for i in "abc")
    assert isinstance(a, LTX2Entry) and a.options.distilled
    assert isinstance(b, LTXVEntry) and b.options.guidance_min_sigma == 0.5
    assert isinstance(c, BuiltinEntry) and (c.options.candidates, c.options.tiny_seed) == (2, 3)
    assert not hasattr(a.options, "candidates") and not hasattr(b.options, "candidates")
    # the base validates to the family's entry; it is never built by itself
    entry = ModelEntry.model_validate({"id": "x", "family": "builtin"})
    assert type(entry) is BuiltinEntry and type(entry.options) is BuiltinOptions
    with pytest.raises(TypeError, match="model_validate"):
        ModelEntry(id="x", family="ltxv")
