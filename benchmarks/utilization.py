"""Achieved TFLOP/s, the fraction of the device's peak, and the roofline bound of a measured rate.

FLOPs and bytes per image come from common.calc: a training step costs 3x the forward FLOPs
(calc's train_flops); its bytes are calc.traffic_bytes_per_image (weights once per batch, activations per image).
Peaks are NVIDIA's datasheet figures, dense: the datasheets print the tensor-core (TF32, BF16)
rates "with sparsity", which is twice the dense rate, so the table holds half the printed figure.
"fp32" is the plain (non-tensor-core) FP32 rate. A device not in the table, the CPU included,
has no peak: utilisation is then None, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DevicePeak:
    name: str
    tflops: dict  # precision ("fp32", "tf32", "bf16") -> dense peak, TFLOP/s
    bandwidth_gbs: float  # device memory bandwidth, GB/s
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


_H100 = "NVIDIA H100 Tensor Core GPU datasheet (SXM / PCIe / NVL columns)"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (SXM / NVL columns)"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet (dense figures; bandwidth per memory size and form factor)"

# (regular expression matched against the framework's device name, case-insensitive); first match wins.
PEAKS: tuple[tuple[str, DevicePeak], ...] = (
    # H200: FP32 67 / 60 TFLOPS; TF32 989 / 835 and BF16 1,979 / 1,671 (sparse); 4.8 TB/s for both.
    (r"H200.*NVL", DevicePeak("H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}, 4800.0, _H200)),
    (r"H200", DevicePeak("H200 SXM", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5}, 4800.0, _H200)),
    # H100: FP32 67 / 51 / 60; TF32 989 / 756 / 835 and BF16 1,979 / 1,513 / 1,671 (sparse);
    # 3.35 / 2 / 3.9 TB/s. The SXM part names itself "NVIDIA H100 80GB HBM3".
    (r"H100.*NVL", DevicePeak("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}, 3900.0, _H100)),
    (r"H100.*PCIe", DevicePeak("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5}, 2000.0, _H100)),
    (r"H100", DevicePeak("H100 SXM", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5}, 3350.0, _H100)),
    # A100: FP32 19.5, TF32 156, BF16 312 (dense) for every form factor; 1,935 GB/s (80GB PCIe),
    # 2,039 GB/s (80GB SXM), 1,555 GB/s (40GB PCIe and SXM).
    (r"A100.*(80GB.*PCIe|PCIe.*80GB)", DevicePeak("A100 80GB PCIe", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
                                                  1935.0, _A100)),
    (r"A100.*80GB", DevicePeak("A100 80GB SXM", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}, 2039.0, _A100)),
    (r"A100", DevicePeak("A100 40GB", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}, 1555.0, _A100)),
)


def peak_for(device_name: str | None) -> DevicePeak | None:
    for pattern, peak in PEAKS:
        if device_name and re.search(pattern, device_name, re.IGNORECASE):
            return peak
    return None


def achieved_tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12


def fraction_of_peak(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: 1e12 FLOP in 1 s on a 2 TFLOP/s device is 0.5."""
    return None if not peak_tflops else achieved_tflops(flops, seconds) / peak_tflops


def roofline_images_per_second(flops_per_image: float, bytes_per_image: float, peak_tflops: float,
                               bandwidth_gbs: float) -> tuple[float, str]:
    """The roofline's bound on images/s, and which roof sets it ("compute" or "memory")."""
    compute = peak_tflops * 1e12 / flops_per_image
    memory = bandwidth_gbs * 1e9 / bytes_per_image
    return (compute, "compute") if compute <= memory else (memory, "memory")


def utilization(images_per_second: float, flops_per_image: float, bytes_per_image: float, *,
                peak: DevicePeak | None, precision: str) -> dict:
    """Everything the report shows about one measured rate; the peak-based entries are None without a peak."""
    out = {
        "flops_per_image": flops_per_image,
        "bytes_per_image": bytes_per_image,
        "arithmetic_intensity": flops_per_image / bytes_per_image,
        "achieved_tflops": achieved_tflops(images_per_second * flops_per_image, 1.0),
        "peak_device": None, "peak_tflops": None, "bandwidth_gbs": None, "mfu": None,
        "roofline_images_per_second": None, "roofline_bound": None, "fraction_of_roofline": None,
    }
    if peak is None or precision not in peak.tflops:
        return out
    bound, roof = roofline_images_per_second(flops_per_image, bytes_per_image, peak.tflops[precision],
                                             peak.bandwidth_gbs)
    out.update(peak_device=peak.name, peak_tflops=peak.tflops[precision], bandwidth_gbs=peak.bandwidth_gbs,
               mfu=fraction_of_peak(images_per_second * flops_per_image, 1.0, peak.tflops[precision]),
               roofline_images_per_second=bound, roofline_bound=roof,
               fraction_of_roofline=images_per_second / bound)
    return out
