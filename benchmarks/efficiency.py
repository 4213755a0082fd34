"""How close EAR training and inference come to this machine's physical limit.

The limit is measured, not looked up: float32 matrix multiplication (1024 x 1024, the best case for
any BLAS) in the same run, on the same device and thread count.  Achieved GFLOP/s of a stage is
its FLOPs per image (``torch.utils.flop_counter``: convolutions and matmuls; the element-wise work
of BatchNorm, activations, SSIM and MSGMS is real time but not counted) times its images per
second; the ratio to the matmul rate says how much of the time goes into useful arithmetic.
Training throughput is measured on the real step: obfuscation, U-Net forward and backward,
L2 + SSIM + MSGMS loss and the Adam update, at a profile's image size and widths.
"""
from __future__ import annotations


import torch
from pydantic import BaseModel
from torch.utils.flop_counter import FlopCounterMode

from fader_kit.model.config import get_profile
from fader_kit.model.obfuscation import obfuscate
from fader_kit.model.training import reconstruction_loss, seeded_init
from fader_kit.model.unet import EARUNet
from fader_kit.util.timing import time_call


class Efficiency(BaseModel):
    device: str
    threads: int
    profile: str
    image_size: int
    batch: int
    matmul_gflops: float
    train_images_per_s: float
    train_gflop_per_image: float
    infer_images_per_s: float
    infer_gflop_per_image: float

    @property
    def train_gflops(self) -> float:
        return self.train_images_per_s * self.train_gflop_per_image

    @property
    def infer_gflops(self) -> float:
        return self.infer_images_per_s * self.infer_gflop_per_image

    def markdown(self) -> str:
        def line(stage: str, ips: float, per: float, rate: float) -> str:
            return (f"| {stage} | {ips:.1f} | {per:.2f} | {rate:.1f} | {100 * rate / self.matmul_gflops:.0f} % |")

        return "\n".join([
            f"### EAR efficiency ({self.profile} profile U-Net, {self.image_size}x{self.image_size}, batch {self.batch}, "
            f"{self.device}, {self.threads} threads)", "",
            "| stage | images / s | GFLOP / image | achieved GFLOP/s | of measured float32 matmul |",
            "|---|---|---|---|---|",
            line("EAR training step (fwd + bwd + Adam)", self.train_images_per_s, self.train_gflop_per_image,
                 self.train_gflops),
            line("EAR inference (reconstruction)", self.infer_images_per_s, self.infer_gflop_per_image, self.infer_gflops),
            "", f"Measured float32 matmul (1024x1024) in the same run: {self.matmul_gflops:.1f} GFLOP/s.", "",
        ])


def _rate(fn, device: torch.device, *, warmup: int, repeats: int) -> float:
    """Seconds per call: the best of ``repeats`` after ``warmup`` calls (the least disturbed run)."""
    for _ in range(warmup):
        fn()
    return min(time_call(fn, device) for _ in range(repeats))


def matmul_gflops(device: torch.device, *, n: int = 1024, repeats: int = 5) -> float:
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    seconds = _rate(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * n**3 / seconds / 1e9


def measure_efficiency(*, profile: str = "cpu", batch: int = 8, device: str | torch.device = "cpu",
                       repeats: int = 3, seed: int = 0) -> Efficiency:
    device = torch.device(device)
    prof = get_profile(profile)
    size, m = prof.image_size, prof.fader_head.patch_size
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.85).to(device)
    unet = seeded_init(lambda: EARUNet(prof.unet), seed).to(device).train()
    opt = torch.optim.Adam(unet.parameters(), lr=prof.ear.lr)

    def step() -> None:
        loss = reconstruction_loss(unet(obfuscate(x, mask, m)), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:  # the whole step, loss included (SSIM's and MSGMS' convolutions count too)
        step()
    train_flops = counter.get_total_flops() / batch
    train_s = _rate(step, device, warmup=1, repeats=repeats)
    unet.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(x)
    infer_flops = counter.get_total_flops() / batch
    with torch.no_grad():
        infer_s = _rate(lambda: unet(x), device, warmup=1, repeats=repeats)
    return Efficiency(
        device=str(device), threads=torch.get_num_threads(), profile=prof.name, image_size=size, batch=batch,
        matmul_gflops=matmul_gflops(device), train_images_per_s=batch / train_s, train_gflop_per_image=train_flops / 1e9,
        infer_images_per_s=batch / infer_s, infer_gflop_per_image=infer_flops / 1e9,
    )
