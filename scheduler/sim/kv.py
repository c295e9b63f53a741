"""KV-cache block accounting of the simulator (paged attention, vLLM's block manager in brief).

A request holds ``ceil(computed tokens / block_size)`` blocks once its step ran; blocks are
allocated as its context grows, all freed at once when it finishes or is preempted by
recompute. There is no prefix sharing and no swapping, so two numbers say everything: the free
count and the blocks held per request. The hot loops of :mod:`scheduler.sim.loop` read
``free`` and ``held`` directly (an attribute access instead of a method call per request per
step); everything else goes through the methods.
"""

from __future__ import annotations


class KVBlocks:
    """``num_blocks`` blocks of ``block_size`` tokens shared by ``n`` requests."""

    __slots__ = ("block_size", "free", "held", "num_blocks")

    def __init__(self, num_blocks: int, block_size: int, n: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks  # blocks not held by any request
        self.held = [0] * n  # request index -> blocks it holds (lazy during a decode stretch)

    def blocks(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` tokens (ceil division)."""
        return -(-tokens // self.block_size)

    def assign(self, idx: int, nb: int) -> None:
        """A request (holding none) takes ``nb`` blocks: its first chunk on admission."""
        self.free -= nb
        self.held[idx] = nb

    def release(self, idx: int) -> None:
        """Free every block request ``idx`` holds (it finished or was preempted)."""
        self.free += self.held[idx]
        self.held[idx] = 0

    def used_tokens(self) -> int:
        """KV tokens of the blocks in use (the step table's ``kv_tokens``)."""
        return (self.num_blocks - self.free) * self.block_size
