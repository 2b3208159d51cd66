"""The models: each one's state machine, admission, the scheduler that fits them into
RAM and VRAM, the registry that owns them, and what they are measured with."""
