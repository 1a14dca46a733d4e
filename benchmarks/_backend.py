"""Prints the JAX build for this machine: `cuda13`, `cuda12`, `tpu` or `cpu`.

`make bench` installs `jaxtricks[bench,<build>]` with it (`make bench BACKEND=cpu`
overrides it). Runs before JAX is installed, so it reads the machine, not JAX:

- an NVIDIA GPU that `nvidia-smi` lists: `cuda13` when the driver supports CUDA 13
  (the "CUDA Version" of `nvidia-smi`'s header), `cuda12` otherwise;
- a Google TPU: a PCI device of vendor 0x1ae0 (what libtpu itself looks for);
- otherwise `cpu`.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

GOOGLE_PCI_VENDOR = "0x1ae0"


def cuda_build(nvidia_smi_output: str) -> str:
    """`cuda13` or `cuda12`, from the driver's CUDA version in `nvidia-smi`'s header."""
    match = re.search(r"CUDA Version:\s*(\d+)", nvidia_smi_output)
    return "cuda13" if match and int(match.group(1)) >= 13 else "cuda12"


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 and "GPU" in done.stdout else None


def _has_tpu(pci_devices: pathlib.Path = pathlib.Path("/sys/bus/pci/devices")) -> bool:
    try:
        vendors = [(device / "vendor").read_text().strip() for device in pci_devices.iterdir()]
    except OSError:
        return False
    return GOOGLE_PCI_VENDOR in vendors


def detect() -> str:
    """The JAX build for this machine."""
    output = _nvidia_smi()
    if output is not None:
        return cuda_build(output)
    return "tpu" if _has_tpu() else "cpu"


if __name__ == "__main__":
    print(detect())
