"""What every benchmark shares: the environment header, percentiles, sample order, summaries.

Imported by the scripts in bench/ as `common` (each runs as `python bench/<script>.py`, which
puts bench/ first on sys.path).
"""

import os
import platform
import random
import socket
import statistics
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx

# The README's d2l linear regression, as the benches post it.
D2L = {
    "dataset": {
        "type": "synthetic_linear",
        "n_samples": 1000,
        "true_w": [2, -3.4],
        "true_b": 4.2,
        "noise": 0.01,
        "seed": 0,
    },
    "model": {"type": "linear"},
    "loss": "mse",
    "optimizer": {"type": "sgd", "lr": 0.03},
    "epochs": 3,
    "batch_size": 10,
}

# The libraries whose versions decide the numbers; each bench may add its own.
LIBRARIES = ("torch", "fastapi", "starlette", "uvicorn", "sqlalchemy", "pydantic", "psycopg")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, timeout: float = 60) -> None:
    """Wait until the API at `url` answers /healthz with 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API at {url} did not start")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's guess elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def version(package: str) -> str:
    """The installed version of a distribution, or `missing`."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def environment(extra: dict[str, str] | None = None) -> list[str]:
    """Header lines: cores, CPU, Python, library versions and the load when the bench starts."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {name: version(name) for name in LIBRARIES} | (extra or {})
    load = os.getloadavg()
    return [
        f"cores: {os.cpu_count()} ({usable} usable by this process), {cpu_model()}",
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}",
        "libraries: " + ", ".join(f"{name} {value}" for name, value in versions.items()),
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    ]


def percentile(values: list[float], p: int) -> float:
    """The p-th percentile (1..99), linearly interpolated between order statistics.

    statistics.quantiles' inclusive method treats the values as the whole population, so p50
    is the median and p95 of 50 values lies between the 47th and 48th smallest, not the max.
    """
    if len(values) < 2:
        raise ValueError(f"a percentile needs at least 2 values, got {len(values)}")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def sample_order(names: list[str], samples: int, seed: int) -> list[tuple[str, int]]:
    """Every (configuration, sample number) pair, shuffled by `seed`.

    Interleaving the samples of different configurations in a random order spreads slow
    drifts (thermal, a neighbour's load, page cache) over all of them instead of one.
    """
    order = [(name, sample) for sample in range(1, samples + 1) for name in names]
    random.Random(seed).shuffle(order)
    return order


@dataclass(frozen=True)
class Spread:
    """The median of a configuration's samples and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        """Summarise one metric's per-sample values."""
        return cls(statistics.median(values), min(values), max(values))

    def format(self, digits: int = 1) -> str:
        """`median (min-max)`, e.g. `512.3 (498.0-530.1)`."""
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def status_bytes(pid: int, field: str) -> int:
    """A size field of /proc/PID/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(pid: int) -> int:
    """Reset the process's VmHWM to its VmRSS; returns that resident size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_bytes(pid, "VmRSS")


def child_pid(pid: int) -> int:
    """The first child a `fitserve` command spawned (the API process, or a worker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in children.read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
        time.sleep(0.1)
    raise RuntimeError(f"process {pid} started no child")
