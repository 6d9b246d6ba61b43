"""minigpt: InstructGPT from scratch, small enough to read."""
