"""Which torch device a party computes on: `--device auto|cpu|cuda` and the run-config key `device`.

"auto" takes CUDA when this torch build sees a GPU and the CPU otherwise; "cuda" on a machine without one is a
user mistake, refused with one line instead of a crash deep inside a forward pass. CPU is the default
everywhere because it is what the tests and CI run on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a device is resolved, so the config layer stays light
    import torch

AUTO, CPU, CUDA = "auto", "cpu", "cuda"
DEVICES = (AUTO, CPU, CUDA)


def check_device_name(name: str) -> str:
    """`name` if it is one of DEVICES; a ValueError naming the choices otherwise."""
    if name not in DEVICES:
        raise ValueError(f"device {name!r} is not one of {', '.join(DEVICES)}")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch device for `name`: auto -> cuda when available else cpu; cuda without a GPU is refused."""
    import torch

    check_device_name(name)
    if name == CPU or (name == AUTO and not torch.cuda.is_available()):
        return torch.device(CPU)
    if not torch.cuda.is_available():
        raise ValueError(f"device cuda was requested but torch {torch.__version__} sees no CUDA GPU "
                         "(use --device cpu or auto)")
    return torch.device(CUDA)


def device_label(device: torch.device) -> str:
    """What a report names the device by: the card's name for CUDA, "cpu" otherwise."""
    import torch

    if device.type == CUDA:
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return CPU


def on_device(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether `tensor` lives on `device`; "cuda" means the current CUDA device, as `.to("cuda")` does."""
    import torch

    if tensor.device.type != device.type:
        return False
    if device.index is None and device.type == CUDA:
        return tensor.device.index in (None, torch.cuda.current_device())
    return device.index is None or tensor.device.index == device.index


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what a benchmark says it ran on), else platform's guess."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
                        platform.processor() or platform.machine())
    except OSError:
        return platform.processor() or platform.machine()
