"""The judge's training pipeline on the SDK side: distillation, SFT data and DPO pairs (`training/` holds the
TRL scripts that consume them)."""
