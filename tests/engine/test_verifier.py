"""The built-in model's prompt verifier: labels, scores, picking drafts, and the served path
(engine) ranking drafts exactly as the trainer's sampler (``aiprod eval``) does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aiprod.builtin.verifier import IGNORE, PromptVerifier, classification_loss, pick_best

CAPTION = "two red squares moving left on a black background"


def _verifier(seed: int = 0, **kw) -> PromptVerifier:  # noqa: ANN003
    torch.manual_seed(seed)
    return PromptVerifier(in_channels=8, channels=16, embed_dim=16, **kw).eval()


def test_labels_follow_the_caption_and_ignore_what_it_does_not_state() -> None:
    v = _verifier()
    lab = v.labels([CAPTION, "a red ball bouncing"]).tolist()
    assert lab[0] == [1, 1, v.classes["color"].index("red"), 0]  # 2 -> index 1, square, left
    assert lab[1] == [IGNORE, IGNORE, v.classes["color"].index("red"), IGNORE]


def test_score_is_the_log_likelihood_of_the_stated_attributes() -> None:
    v = _verifier(attributes=("count", "shape"))
    x = torch.randn(2, 8, 3, 4, 4)
    labels = v.labels([CAPTION, "a red ball bouncing"])
    logits = v(x, torch.zeros(2))
    want = torch.log_softmax(logits["count"], 1)[0, 1] + torch.log_softmax(logits["shape"], 1)[0, 1]
    got = v.score(x, labels)
    assert torch.allclose(got[0], want, atol=1e-5)
    assert got[1] == 0  # says neither count nor shape: no preference
    assert v.judges([CAPTION]) and not v.judges(["a red ball bouncing"])
    both = _verifier(attributes=("count", "shape", "color")).score(x, labels)
    assert both[1] < 0  # the colour it does state now counts


def test_loss_skips_unstated_attributes_and_learns() -> None:
    v = _verifier().train()
    x = torch.randn(6, 8, 3, 4, 4)
    labels = v.labels([CAPTION, "three blue circles moving up on a white background"] * 3)
    opt = torch.optim.Adam(v.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = classification_loss(v(x, torch.full((6,), 0.2)), labels)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    silent = v.labels(["a red ball bouncing"] * 2)  # colour only: the other three ignored
    assert torch.isfinite(classification_loss(v(x[:2], torch.zeros(2)), silent))


def test_pick_best_keeps_the_highest_scoring_draft_per_prompt() -> None:
    v = _verifier()
    captions = [CAPTION, "a green triangle moving up on a gray background"]
    drafts = torch.randn(3 * 2, 8, 3, 4, 4)  # candidate-major: row k*2 + i
    best, chosen, scores = pick_best(v, drafts, captions, 3)
    assert scores.shape == (3, 2)
    for i in range(2):
        k = int(scores[:, i].argmax())
        assert int(chosen[i]) == k
        assert torch.equal(best[i], drafts[k * 2 + i])
    with pytest.raises(ValueError, match="5 latents for 3 x 2"):
        pick_best(v, drafts[:5], captions, 3)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    v = _verifier(attributes=("count",))
    v.save_pretrained(tmp_path / "verifier")
    w = PromptVerifier.from_pretrained(tmp_path / "verifier").eval()
    x = torch.randn(2, 8, 3, 4, 4)
    assert tuple(w.config.attributes) == ("count",)
    half = torch.full((2,), 0.5)
    for a, b in zip(v(x, half).values(), w(x, half).values(), strict=True):
        assert torch.equal(a, b)


def test_unknown_attribute_or_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="choose from"):
        PromptVerifier(attributes=("count", "size"))
    with pytest.raises(ValueError, match="give 1 .* or 2"):
        PromptVerifier(stage=3)
    v = _verifier()
    with pytest.raises(ValueError, match="at least one"):
        v.rank_by([])
    with pytest.raises(ValueError, match="choose from"):
        v.rank_by(["count", "size"])
    v.rank_by(["shape"])
    assert list(v.config.attributes) == ["shape"]


@pytest.mark.parametrize("stage", [1, 2])
def test_engine_ranks_drafts_as_the_trainers_sampler_does(
    builtin_entry,  # noqa: ANN001
    tmp_path: Path,
    stage: int,
) -> None:
    """With ``candidates = 2`` the served path drafts two stage-1 latents and keeps the one the
    verifier scores highest, before the refinement (a stage-1 verifier) or after refining both
    (stage 2): the same frames as ``aiprod eval``'s sampler."""
    from aiprod.builtin import sample
    from aiprod.engine import build_request, load_pipeline
    from aiprod.training import components
    from aiprod.training.config import BuiltinArch

    words = set(components.caption_words(CAPTION))
    comp = components.build_builtin(BuiltinArch(), vocab=words, seed=0)
    torch.manual_seed(1)
    comp.verifier = PromptVerifier(
        in_channels=comp.vae.config.latent_channels, channels=16, stage=stage
    )
    folder = components.save_folder(comp, tmp_path / "m")
    loaded = components.load_folder(folder)
    assert loaded.verifier is not None and loaded.verifier.config.stage == stage
    kw = {"width": 64, "height": 64, "num_frames": 9, "steps": 3, "guidance": 3.0, "seed": 5}
    opts = builtin_entry.options
    two = {
        **kw,
        "two_stage": True,
        "refine_steps": 2,
        "refine_sigma": opts.refine_strength,
        "refine_guidance": opts.refine_guidance_scale,
    }
    ref = sample.generate(loaded, [CAPTION], candidates=2, **two)[0]
    one = sample.generate(loaded, [CAPTION], candidates=1, **two)[0]
    assert ref.shape == one.shape
    with pytest.raises(ValueError, match="two_stage=True or candidates=1"):
        sample.generate(loaded, [CAPTION], candidates=2, **{**two, "two_stage": False})
    no_verifier = components.Components(**{**loaded.__dict__, "verifier": None})
    with pytest.raises(ValueError, match="use candidates=1"):
        sample.generate(no_verifier, [CAPTION], candidates=2, **two)

    entry = builtin_entry.model_copy(
        update={
            "path": folder,
            "options": opts.model_copy(update={"refine_steps": 2, "candidates": 2}),
        }
    )
    pipe = load_pipeline(entry, "cpu")
    params = {
        "prompt": CAPTION,
        "width": 64,
        "height": 64,
        "num_frames": 9,
        "num_inference_steps": 3,
        "guidance_scale": 3.0,
        "seed": 5,
        "two_stage": True,
    }
    video = pipe(build_request(entry, params))
    scores = video.info["verifier_scores"]
    assert video.info["candidates"] == 2 and len(scores) == 2
    assert video.info["chosen_candidate"] == int(np.argmax(scores))
    ref8 = ((ref.permute(1, 2, 3, 0) + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8)
    diff = np.abs(video.frames.astype(int) - ref8.numpy().astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    # single-stage requests run one draft: there is no refinement to spend it on
    single = pipe(build_request(entry, {**params, "two_stage": False}))
    assert "candidates" not in single.info
    # nor do prompts that state neither a count nor a shape: every draft would score 0
    assert loaded.verifier.judges(["a red square"])  # a shape (and so a count) is enough
    plain = pipe(build_request(entry, {**params, "prompt": "a red thing moving left"}))
    assert "candidates" not in plain.info


def test_candidates_without_a_verifier_serve_one_draft_and_other_families_refuse(
    builtin_entry,  # noqa: ANN001
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiprod.core.registry import ModelEntry
    from aiprod.engine import build_request, load_pipeline
    from aiprod.training import components
    from aiprod.training.config import BuiltinArch

    comp = components.build_builtin(BuiltinArch(), vocab=set(CAPTION.split()), seed=0)
    folder = components.save_folder(comp, tmp_path / "m")
    opts = builtin_entry.options.model_copy(update={"candidates": 2})
    entry = builtin_entry.model_copy(update={"path": folder, "options": opts})
    with caplog.at_level("WARNING", logger="aiprod.builtin.backend"):
        pipe = load_pipeline(entry, "cpu")
    assert "has no prompt verifier" in caplog.text and "serving one" in caplog.text
    params = {"prompt": CAPTION, "width": 64, "height": 64, "num_frames": 9, "seed": 1}
    video = pipe(build_request(entry, {**params, "num_inference_steps": 2, "two_stage": True}))
    assert "candidates" not in video.info
    with pytest.raises(ValueError, match="family 'ltxv' has none"):
        ModelEntry.model_validate(
            {"id": "x", "family": "ltxv", "path": folder, "options": {"candidates": 2}}
        )
