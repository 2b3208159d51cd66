"""What a model's upstream uses in RAM and VRAM, as resources.Monitor samples it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Footprint:
    """The latest sample, and the most ever seen: the peaks are what the model really costs,
    and what the scheduler budgets for when it starts again. Owned by the Model, which
    writes it only through Model.record_usage."""

    memory_bytes: int | None = None
    vram_bytes: int | None = None
    peak_memory_bytes: int | None = None
    peak_vram_bytes: int | None = None

    def record(self, memory: int | None, vram: int | None, peak: bool = True) -> None:
        self.memory_bytes, self.vram_bytes = memory, vram
        if not peak:
            return
        if memory and memory > (self.peak_memory_bytes or 0):
            self.peak_memory_bytes = memory
        if vram and vram > (self.peak_vram_bytes or 0):
            self.peak_vram_bytes = vram
