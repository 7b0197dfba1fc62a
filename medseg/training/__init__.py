"""Training: the models medseg segments with, trained or fine-tuned on a cohort.

A layer of its own above the engines it trains (``medseg.sam2``, ``medseg.maskrcnn``) and below
the pipeline. ``medseg.training.sam2``: SAM2 training and the pretraining of the shipped base model;
``medseg.training.maskrcnn``: the Mask R-CNN baseline's training.
"""
