"""Reference prompting's modes and selection defaults, in a module without torch.

The napari panel shows them when it opens; importing the engine (torch, sam2) then would
delay the panel by seconds.
"""

MODES = ("revsam2", "baseline", "baseline-middle")

#: Set by the ablation (``benchmarks/revsam2.py --ablation --quick``) with the shipped base model
#: ``medseg-micro`` on the demo cohort (README, "Reference prompting"): 3 single-reference sets x 4
#: queries x 3 labels, mean Dice: supports matched by relative z, z-gate of 2 slices, the single
#: best-scoring slice at threshold 0.5: 0.520; top_k 3: 0.511; no threshold: 0.504; baseline-middle
#: 0.488; baseline 0.445. With 3 references together: 0.547, top_k 3 0.550, baseline 0.502. (Measured
#: again after the base model's switch to single-mask tracking; the first run gave the same ranking.)
#: Matched placement carries most of the gain (the kidneys are never found from supports placed
#: before the query); the gate keeps each label off the slices where no reference has it. The rival
#: check changed no Dice there and stays on as a guard. Another model or cohort may want other
#: values: run the ablation.
DEFAULT_TOP_K = 1
DEFAULT_THRESHOLD = 0.5
DEFAULT_PLACEMENT = "matched"
DEFAULT_GATE_MARGIN: int | None = 2
DEFAULT_REJECT_RIVALS = True
