"""Seconds per fp32 training step of LinkNet-34 at 128x128, batch 8: the figure the README compares CPUs by.

    python tools/linknet_step.py                              # this CPU's own kernels
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python tools/linknet_step.py   # torch's AVX2 kernels

An AVX2-only CPU measured 1.03 s a step (the first-contact issue); comparing this CPU's figure with its
AVX2-kernel figure separates what the instruction set costs from what the rest of the chip does.
"""

import time

import segmentation_models_pytorch as smp
import torch

model = smp.Linknet("resnet34", encoder_weights=None, classes=1)
optimizer = torch.optim.Adam(model.parameters())
images, masks = torch.randn(8, 3, 128, 128), (torch.rand(8, 1, 128, 128) > 0.5).float()


def step() -> None:
    optimizer.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(model(images), masks).backward()
    optimizer.step()


for _ in range(2):  # warm-up
    step()
started = time.perf_counter()
for _ in range(5):
    step()
print(f"{(time.perf_counter() - started) / 5:.2f} s a step (CPU capability {torch.backends.cpu.get_cpu_capability()}, "
      f"{torch.get_num_threads()} threads)")
