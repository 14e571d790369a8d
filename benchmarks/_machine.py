"""The machine line every benchmark records beside its figures."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """`platform; CPU model, N CPUs; Python X.Y.Z`."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):  # platform.processor() is often empty on Linux
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    return f"{platform.platform()}; {cpu}, {os.cpu_count()} CPUs; Python {platform.python_version()}"
