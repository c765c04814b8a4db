"""Training and fine-tuning of CovidSeg's slice U-Net (``python -m CovidSegLib.training``)."""
