"""The preallocated KV cache the exported language-model graph reads when it decodes
(molmo2_ros.engines.export).

One torch tensor per layer and kind, [1, kv_heads, capacity, head_dim], on the runner's
device, allocated once and bound once to the decode run of the graph (ONNX Runtime IO binding or
TensorRT tensor addresses). The prefill's KV is copied in once per prompt; after each
decode step the graph's `new.*` key/value (one slot) is written at the next free slot and
`mask` (the graph's `past_mask`, 1 = filled) grows by one. Nothing is
concatenated or reallocated per step, so a step costs the same at any fill.
"""
from __future__ import annotations


class StaticKVCache:
    def __init__(self, torch, *, num_layers: int, kv_heads: int, head_dim: int, capacity: int, dtype, device):
        self.torch = torch
        self.capacity = capacity
        shape = (1, kv_heads, capacity, head_dim)
        # zeros, not empty: unfilled slots are masked out, but garbage NaN/inf would survive 0 * value
        self.past = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2 * num_layers)]
        self.new = [torch.zeros((1, kv_heads, 1, head_dim), dtype=dtype, device=device) for _ in range(2 * num_layers)]
        self.mask = torch.zeros((1, capacity), dtype=torch.int64, device=device)
        self.length = 0

    def load(self, present, attention_mask) -> None:
        """Fill the first slots with the prefill's KV ([1, kv_heads, seq, head_dim] each) and
        the mask with the prompt's attention mask ([1, seq])."""
        seq = int(present[0].shape[2])
        if seq > self.capacity:
            raise ValueError(f"prompt of {seq} tokens exceeds the engines' KV capacity of {self.capacity}")
        for buffer, value in zip(self.past, present):
            buffer[:, :, :seq].copy_(value)
        self.mask.zero_()
        self.mask[:, :seq].copy_(self.torch.as_tensor(attention_mask, dtype=self.torch.int64))
        self.length = seq

    def append(self) -> None:
        """Write the last decode step's `new` key/value into the next slot."""
        if self.length >= self.capacity:
            raise ValueError(f"the KV cache is full ({self.capacity} slots)")
        for buffer, value in zip(self.past, self.new):
            buffer[:, :, self.length].copy_(value[:, :, 0])
        self.mask[0, self.length] = 1
        self.length += 1
