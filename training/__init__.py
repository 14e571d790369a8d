"""Training scripts for the flexjudge judge (SFT, DPO, export). They import the SDK, never the reverse.

A package so that tests import `training._config`; each script also runs as a file
(`python training/sft.py`, `accelerate launch training/sft.py`).
"""
