"""The built-in model's own world: caption grammar, synthetic clips, its sampler, the draft
verifier and scoring. Nothing outside this package knows the caption grammar."""
