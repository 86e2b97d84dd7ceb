"""The dense tasks: ``locvit detect`` (COCO-format detection) and ``locvit segment`` (ADE20K-style segmentation)."""
