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
#: check changed no Dice there and stays on as a guard.
#: How the re-prompt pass starts, same 36 pairs (re-prompt slices selected inside the gate without
#: its margin): each selected slice's forward mask segmented again from its parts' boxes, without the
#: other patients' supports in that pass, 0.565; the forward mask without the supports 0.541; boxes
#: with them 0.519; the forward mask with them (RevSAM2 as published, the earlier default) 0.519. The
#: supports pull the re-prompt towards their own object's size. With the demo's fine-tune the same
#: order: 0.718 / 0.701 / 0.705 / 0.692. Another model or cohort may want other values: run the
#: ablation.
DEFAULT_TOP_K = 1
DEFAULT_THRESHOLD = 0.5
DEFAULT_PLACEMENT = "matched"
DEFAULT_GATE_MARGIN: int | None = 2
DEFAULT_REJECT_RIVALS = True
REPROMPTS = ("mask", "box")
DEFAULT_REPROMPT = "box"
DEFAULT_INCLUDE_SUPPORTS = False
