"""spinedet.training: synthetic data, label loaders and Faster R-CNN training (needs the [train] extra)."""
