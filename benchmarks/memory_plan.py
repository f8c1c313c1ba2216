"""The large-model memory plan of docs/training.md: GPU memory per GPU for LoRA and full
fine-tuning of the LTX transformers under DDP and FSDP, COMPUTED from parameter counts (not
measured on a GPU).

Per GPU, in GB (1e9 bytes), with N processes (GPUs):

    state    = 16 * P_trained + 4 * P_frozen         (fp32 weights, fp32 grads, AdamW m and v;
                                                      frozen weights fp32, as the trainer loads)
    DDP:       state                                  (every GPU holds all of it)
    FSDP:      state / N + 2 * 2 * P / blocks         (1/N of it, plus two gathered blocks in
                                                      bf16: the one computing, the prefetched)
    + text encoder (T5-XXL, 4.8 B, fp32, whole on every GPU: 19.2 GB)
    + activations (an assumption, see ACTIVATIONS_GB) + CUDA context and workspace (2 GB)

Fits: total <= 76 GB of an 80 GB GPU (4 GB left for the allocator's fragmentation).

    python benchmarks/memory_plan.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GB = 1e9
# (name, transformer parameters, transformer blocks, LoRA rank-32 parameters on
# to_q/to_k/to_v/to_out.0 of both attentions: blocks x 8 projections x 32 x (d_in + d_out))
MODELS = [
    ("LTX-Video 2B", 1.9e9, 28, 28 * 8 * 32 * (2048 + 2048)),
    ("LTX-Video 13B", 13e9, 48, 48 * 8 * 32 * (4096 + 4096)),
    ("LTX-2 19B", 19e9, 48, 48 * 8 * 32 * (4096 + 4096) * 1.5),  # + the audio stream's, assumed
]
TEXT_ENCODER_GB = 4.8e9 * 4 / GB
# Assumed with gradient_checkpointing: true, one 121-frame 768x512 clip per GPU (6144 latent
# tokens): the block inputs kept (tokens x width x 2 bytes x blocks, about 2.4 GB at 13B) plus
# one block's activations during its recomputation. Without checkpointing every block keeps
# its activations (tens of GB at 13B): the plan assumes checkpointing on.
ACTIVATIONS_GB = 5.0
CONTEXT_GB = 2.0
USABLE_GB = 76.0
GPUS = (1, 2, 4, 8, 16)


def per_gpu(params: float, blocks: int, lora: float, *, mode: str, n: int | None) -> float:
    """GB per GPU; ``n`` None = DDP, else FSDP over n GPUs."""
    trained, frozen = (lora, params) if mode == "lora" else (params, 0.0)
    state = 16 * trained + 4 * frozen
    model = state if n is None else state / n + 2 * 2 * params / blocks
    return model / GB + TEXT_ENCODER_GB + ACTIVATIONS_GB + CONTEXT_GB


def plan() -> list[dict[str, object]]:
    rows = []
    for name, params, blocks, lora in MODELS:
        for mode in ("full", "lora"):
            ddp = per_gpu(params, blocks, lora, mode=mode, n=None)
            fsdp = {n: per_gpu(params, blocks, lora, mode=mode, n=n) for n in GPUS if n > 1}
            fewest = next((n for n in sorted(fsdp) if fsdp[n] <= USABLE_GB), None)
            rows.append(
                {
                    "model": name,
                    "mode": mode,
                    "trained_params_b": (lora if mode == "lora" else params) / 1e9,
                    "ddp_gb": round(ddp, 1),
                    "ddp_fits": ddp <= USABLE_GB,
                    "fsdp_gb": {n: round(v, 1) for n, v in fsdp.items()},
                    "fewest_gpus_fsdp": fewest,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = plan()
    head = ["model", "mode", "trained B", "DDP GB/GPU"] + [f"FSDP {n}" for n in GPUS if n > 1]
    print(" | ".join(head) + " | fewest GPUs (FSDP)")
    for r in rows:
        fsdp = r["fsdp_gb"]
        assert isinstance(fsdp, dict)
        cells = [
            str(r["model"]),
            str(r["mode"]),
            f"{r['trained_params_b']:.2f}",
            f"{r['ddp_gb']}{'' if r['ddp_fits'] else ' (no)'}",
            *(f"{v}" for v in fsdp.values()),
            str(r["fewest_gpus_fsdp"]),
        ]
        print(" | ".join(cells))
    print(
        f"computed, not measured: + T5 {TEXT_ENCODER_GB:.1f} GB, activations {ACTIVATIONS_GB} GB "
        f"(assumed, gradient checkpointing on), context {CONTEXT_GB} GB; fits <= {USABLE_GB} GB"
    )
    if args.json:
        args.json.write_text(json.dumps({"computed_not_measured": True, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
