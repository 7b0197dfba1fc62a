"""SAM2 training: clips with simulated prompts, SAM2's losses, the step loop, validation."""
