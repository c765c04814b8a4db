"""The segmentation engine: the network and its card, the representation it sees, slice-wise inference on GPU or
CPU (int8, BatchNorm folding), post-processing, left/right, the GGO / consolidation rule, one file in and out."""
