"""One line naming the machine a benchmark ran on, printed by every bench script.

Numbers from these scripts are only comparable on the same machine and load, so each prints this
line (CPU model, cores, load average, GPU, Python, torch) next to its results.
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    """CPU, cores, load average, GPU (when torch sees one), platform, Python and torch versions."""
    parts = [
        platform.node(),
        cpu_model(),
        f"{os.cpu_count()} cores",
        f"load average {os.getloadavg()[0]:.1f}",
    ]
    try:
        import torch  # optional here: the store and ROS benches do not need it

        parts.append(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        pass
    parts += [platform.platform(), f"Python {platform.python_version()}"]
    return ", ".join(parts)
