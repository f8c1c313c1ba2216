"""Which rule should the prompt verifier rank stage-1 drafts by? Measured on validation prompts.

For each of ``--num-prompts`` held-out prompts drawn with a *validation* seed (not the one
`aiprod eval` scores with, so choosing a rule here does not tune on the evaluation), draws
``--drafts`` stage-1 drafts as the served two-stage path does (the model's served settings
from models.toml, the trainer's sampler), refines and decodes *every* draft, scores each
clip exactly (``aiprod.builtin.scoring``) and stores the verifier's log likelihood of each
stated attribute. Then, for best-of-2 .. best-of-``--drafts``, it compares:

- one draft (the first), as served without a verifier;
- each ranking rule: the summed log likelihood of a set of stated attributes;
- the oracle: the draft the exact scorer finds right on count and shape (what no rule can beat).

Costs about ``drafts`` clips of generation per prompt (about 13 s per prompt with 4 drafts on
a 2-core AVX-512 CPU). Prints a table and writes JSON (``--out``: rows.json with every draft,
draft_ranking.json with the table).

    .venv/bin/python benchmarks/draft_ranking.py --num-prompts 200 --drafts 4 \\
        --out benchmarks/results/draft_ranking
    .venv/bin/python benchmarks/draft_ranking.py --analyze benchmarks/results/draft_ranking
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VALIDATION_SEED = 4242
ATTRS = ("color", "shape", "count", "direction")
RULES = {
    "count": ("count",),
    "count+shape": ("count", "shape"),
    "shape": ("shape",),
    "all four": ("count", "shape", "color", "direction"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=REPO / "src" / "aiprod" / "builtin_model")
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--drafts", type=int, default=4, help="stage-1 drafts per prompt (>= 2)")
    p.add_argument("--seed", type=int, default=VALIDATION_SEED, help="validation prompt seed")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per batch")
    p.add_argument(
        "--guidance", type=float, default=None, help="stage-1 guidance (default: the served one)"
    )
    p.add_argument(
        "--guidance-min-sigma",
        type=float,
        default=None,
        help="stage-1 guidance only at noise levels at or above this (default: the served one)",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "draft_ranking")
    p.add_argument(
        "--analyze", type=Path, default=None, help="only analyse this folder's rows.json"
    )
    args = p.parse_args(argv)
    if args.drafts < 2:
        p.error(f"--drafts {args.drafts}: give 2 or more (ranking needs drafts to choose from)")
    if args.num_prompts < 1 or args.batch_size < 1:
        p.error("--num-prompts and --batch-size: give 1 or more")
    from aiprod.training.evaluate import EVAL_SEED

    if args.seed == EVAL_SEED:
        p.error(f"--seed {EVAL_SEED} is the evaluation's: pick another for validation")
    return args


def overrides(args: argparse.Namespace) -> dict[str, float]:
    """The served stage-1 settings this run replaces (``--guidance``, ``--guidance-min-sigma``)."""
    keys = ("guidance", "guidance_min_sigma")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def generate_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from aiprod.builtin.sample import draft, model_shift, refine, tile_prompts
    from aiprod.builtin.scoring import score
    from aiprod.builtin.verifier import ATTRIBUTES
    from aiprod.training.data import tensor_to_frames
    from aiprod.training.deploy import load_any
    from aiprod.training.encode import denormalize_latents, encode_prompts, latent_shape
    from aiprod.training.evaluate import heldout_prompts, served_settings
    from aiprod.training.flow import inference_sigmas

    comp, _ = load_any(args.model_dir)
    if comp.verifier is None or comp.upsampler is None:
        raise SystemExit(f"{args.model_dir}: needs a prompt verifier and a latent upsampler")
    for m in comp.modules().values():
        m.eval()
    st = {**served_settings(), **overrides(args)}
    w, h, f, k = st["width"], st["height"], st["num_frames"], args.drafts
    sigmas = inference_sigmas(st["steps"], shift=model_shift(comp))
    prompts = heldout_prompts(args.num_prompts, seed=args.seed)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for s in range(0, len(prompts), args.batch_size):
        chunk = prompts[s : s + args.batch_size]
        caps, b = [c for c, _, _ in chunk], len(chunk)
        with torch.no_grad():
            cond, uncond = encode_prompts(comp, caps), encode_prompts(comp, [""] * b)
            gen = torch.Generator().manual_seed(args.seed + s)  # as `aiprod eval` seeds
            drafts = draft(  # the served path's drafts (sample.generate draws the same)
                comp,
                cond,
                uncond,
                shape=latent_shape(comp.vae, width=w // 2, height=h // 2, num_frames=f),
                generator=gen,
                candidates=k,
                sigmas=sigmas,
                guidance=st["guidance"],
                fps=st["fps"],
                guidance_min_sigma=st["guidance_min_sigma"],
            )
            logits = comp.verifier(drafts, torch.zeros(drafts.shape[0]))
            logp = {a: torch.log_softmax(v.float(), 1) for a, v in logits.items()}
            refined = refine(  # every draft, as a stage-2 ranking would
                comp,
                drafts,
                tile_prompts(cond, k),
                tile_prompts(uncond, k),
                generator=gen,
                guidance=st["guidance"] if st["refine_guidance"] is None else st["refine_guidance"],
                fps=st["fps"],
                steps=st["refine_steps"],
                sigma=st["refine_sigma"],
            )
            z = denormalize_latents(comp.vae, refined)
            video = comp.vae.decode(z, return_dict=False)[0].clamp(-1, 1)
        labels = comp.verifier.labels(caps * k)
        for r in range(k * b):
            j, i = divmod(r, b)  # candidate-major: row j*b + i is prompt i's draft j
            cap, params, _ = chunk[i]
            sc = score(cap, tensor_to_frames(video[r]))
            row: dict[str, Any] = {"prompt": s + i, "draft": j, "caption": cap}
            row["phase"] = params.phase
            for a_i, a in enumerate(ATTRIBUTES):
                y = int(labels[r, a_i])
                row[f"ok_{a}"] = sc[f"{a}_ok"]
                row[f"logp_{a}"] = None if y < 0 else float(logp[a][r, y])
            rows.append(row)
        print(f"{s + b}/{len(prompts)} prompts, {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def analyze(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    k_max = max(r["draft"] for r in rows) + 1
    by = {(r["prompt"], r["draft"]): r for r in rows}
    prompts = sorted({r["prompt"] for r in rows if (r["prompt"], k_max - 1) in by})

    def ok(r: dict[str, Any], a: str) -> bool:
        return r[f"ok_{a}"] is None or bool(r[f"ok_{a}"])  # unstated: nothing to get wrong

    def accuracy(pick: Any) -> dict[str, float]:
        chosen = [by[p, pick(p)] for p in prompts]
        out = {a: round(100 * float(np.mean([ok(r, a) for r in chosen])), 1) for a in ATTRS}
        out["all four"] = round(
            100 * float(np.mean([all(ok(r, a) for a in ATTRS) for r in chosen])), 1
        )
        return out

    table: dict[str, Any] = {"one draft": accuracy(lambda p: 0)}
    for k in range(2, k_max + 1):
        for name, attrs in RULES.items():
            table[f"best of {k}, rank by {name}"] = accuracy(
                lambda p, attrs=attrs, k=k: max(
                    range(k), key=lambda j: sum(by[p, j][f"logp_{a}"] or 0.0 for a in attrs)
                )
            )
        table[f"best of {k}, oracle (count and shape)"] = accuracy(
            lambda p, k=k: max(
                range(k), key=lambda j: (ok(by[p, j], "count") + ok(by[p, j], "shape"), -j)
            )
        )
    return {"prompts": len(prompts), "drafts": k_max, "accuracy_percent": table}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.analyze or args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.analyze is None:
        settings = {"model_dir": str(args.model_dir), "seed": args.seed, **overrides(args)}
        data = {"settings": settings, "rows": generate_rows(args)}
        (out / "rows.json").write_text(json.dumps(data))
    else:
        data = json.loads((out / "rows.json").read_text())
    result = {"settings": data["settings"], **analyze(data["rows"])}
    (out / "draft_ranking.json").write_text(json.dumps(result, indent=2))
    cols = (*ATTRS, "all four")
    print(f"{result['prompts']} validation prompts, up to {result['drafts']} drafts each (%)")
    print(f"{'rule':44s}" + "".join(f"{c:>10s}" for c in cols))
    for name, acc in result["accuracy_percent"].items():
        print(f"{name:44s}" + "".join(f"{acc[c]:10.1f}" for c in cols))


if __name__ == "__main__":
    main()
