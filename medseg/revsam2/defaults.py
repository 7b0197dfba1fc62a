"""Reference prompting's modes and selection defaults, in a module without torch.

The napari panel shows them when it opens; importing the engine (torch, sam2) then would
delay the panel by seconds.
"""

MODES = ("revsam2", "baseline", "baseline-middle")

#: Provisional defaults, chosen by reasoning, not yet by the ablation on real weights
#: (``benchmarks/revsam2.py --ablation``); see the package docstring.
DEFAULT_TOP_K = 3
DEFAULT_THRESHOLD = 0.5
