"""Reference prompting's modes and selection defaults, in a module without torch.

The napari panel shows them when it opens; importing the engine (torch, sam2) then would
delay the panel by seconds.
"""

MODES = ("revsam2", "baseline", "baseline-middle")

#: Set by the ablation (``benchmarks/revsam2.py --ablation``) with a SAM2 trained on the demo
#: cohort (README, "Reference prompting"): with one reference case, the single best-scoring query
#: slice plus the supports gave mean Dice 0.766 over 4 queries x 3 labels, three slices 0.676,
#: the support-then-propagate baseline 0.691. Thresholds 0.5 and 0.7 tied; spacing does not
#: matter for one slice. A different model or cohort may want other values: run the ablation.
DEFAULT_TOP_K = 1
DEFAULT_THRESHOLD = 0.5

#: Provisional until the ablation with medseg-micro sets them (see above).
DEFAULT_PLACEMENT = "matched"
DEFAULT_GATE_MARGIN: int | None = 2
DEFAULT_REJECT_RIVALS = True
