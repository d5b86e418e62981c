"""Per-slice inference latency of the model, 512x512, by batch size, onnxruntime CPU (and torch eager).

onnxruntime runs in this process with intra-op threads pinned; torch eager
runs in a separate process (onnxruntime timed right after a torch forward in
one process gave noisy numbers), on the same weights, same thread count.
"""

import subprocess
import sys

import numpy as np
import pytest

from spinedet.runtime.backends import OnnxRuntimeBackend
from spinedet.runtime.contract import load_card

BATCHES = (1, 4, 8, 16)
PAPER_SECONDS_PER_SLICE = 0.053  # RTX A6000, Vogel et al.


def slices(batch, size, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((batch, channels, *size), dtype=np.float32) ** 4  # mostly dark, some bright: like a stack


@pytest.mark.parametrize("batch", BATCHES)
def test_onnxruntime_cpu(benchmark, onnx_model, threads, batch):
    card = load_card(onnx_model)
    backend = OnnxRuntimeBackend(onnx_model, card, "cpu", threads)
    data = slices(batch, card.input_size, card.channels)
    backend.run(data)  # warm-up
    benchmark.group = f"latency batch {batch}"
    benchmark.name = f"onnxruntime cpu {card.precision} {onnx_model.name} batch {batch}"
    benchmark.extra_info.update({"slices_per_call": batch, "threads": threads, "precision": card.precision,
                                 "model": str(onnx_model), "paper_s_per_slice": PAPER_SECONDS_PER_SLICE})
    benchmark.pedantic(backend.run, args=(data,), rounds=7 if batch <= 8 else 3, iterations=1)


TORCH_WORKER = """
import sys, torch
from spinedet.training.checkpoints import load_model
torch.set_num_threads({threads})
model, config = load_model({checkpoint!r})
model.eval()
x = torch.rand({batch}, config.in_channels, *config.input_size, generator=torch.Generator().manual_seed(0)) ** 4
with torch.inference_mode():
    model(list(x))
    print("ready", flush=True)
    for line in sys.stdin:
        model(list(x))
        print("done", flush=True)
"""


class TorchWorker:
    """torch eager in its own process: each step() runs one forward pass there (pipe overhead ~0.1 ms)."""

    def __init__(self, checkpoint, batch, threads):
        script = TORCH_WORKER.format(threads=threads, checkpoint=str(checkpoint), batch=batch)
        self.process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def step(self):
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done"

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.mark.parametrize("batch", (1, 8))
def test_torch_eager_reference(benchmark, checkpoint, threads, batch):
    worker = TorchWorker(checkpoint, batch, threads)
    try:
        benchmark.group = f"latency batch {batch}"
        benchmark.name = f"torch eager batch {batch}"
        benchmark.extra_info.update({"slices_per_call": batch, "threads": threads, "separate_process": True})
        benchmark.pedantic(worker.step, rounds=3, iterations=1)
    finally:
        worker.close()
