"""An emulated ARM64 device for the tests: a Debian arm64 root run under qemu-user, where the wheel is installed
with the aarch64 wheels of its runtime dependencies, exactly as `pip install tumor-edge` would on a Raspberry Pi
or a Graviton host.

Why a root and not a cross-built wheel check: onnxruntime's aarch64 kernels (NEON, no VNNI) round differently
from x86's, and only running them shows whether a bundle exported on x86 reproduces there.

The root (debootstrap, minutes) is built once per machine and cached under $TUMOR_EDGE_ARM64_CACHE, by default
/var/cache/tumor-edge-arm64, keyed by its recipe (release, architecture, variant, packages): a changed recipe
builds a new root; an interrupted build never counts (it is built in a temporary folder renamed when complete).
Each test run installs the wheel into a fresh venv inside the root and removes it afterwards.

/proc is deliberately NOT mounted in the root: onnxruntime's cpuinfo reads the host's /proc/cpuinfo, finds x86
fields and crashes (SIGSEGV) under qemu. Nothing here needs it.

Everything that cannot be set up on this machine (not root, not Linux x86_64, no qemu-user-static/debootstrap,
binfmt_misc not available, debootstrap or the package registry unreachable) raises `Unavailable` with the reason,
which the tests turn into a skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

CACHE_ENV = "TUMOR_EDGE_ARM64_CACHE"
# The emulated core: a named one, not qemu's `max` (whose features change between qemu versions). Neoverse N1 is
# AWS Graviton2 / Ampere Altra, ARMv8.2 with half-precision arithmetic and dot products, as in a Raspberry Pi 5's
# Cortex-A76; onnxruntime then runs fp16 models in half precision, where x86 computes them in float32.
# `TUMOR_EDGE_ARM64_CPU=cortex-a72` checks a Raspberry Pi 4's core instead (no fp16 arithmetic, no dot products).
CPU_ENV = "TUMOR_EDGE_ARM64_CPU"
DEFAULT_CPU = "neoverse-n1"
DEFAULT_CACHE = Path("/var/cache/tumor-edge-arm64")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
QEMU = "qemu-aarch64-static"
# What runs inside the root: a minimal PATH and nothing inherited from the host (its PYTHONPATH, venv, caches).
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBOOTSTRAP_TIMEOUT_S = 1800
INSTALL_TIMEOUT_S = 900


class Unavailable(RuntimeError):
    """This machine cannot emulate the ARM64 device; the message says why (the tests skip with it)."""


@dataclass(frozen=True)
class RootRecipe:
    """What the cached root is made of; any change makes a new cache key (and a new root)."""

    release: str = "bookworm"
    arch: str = "arm64"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3",)  # no python3-venv: see new_device
    mirror: str = "http://deb.debian.org/debian"  # not part of the key: any mirror gives the same release

    @property
    def key(self) -> str:
        recipe = {k: v for k, v in asdict(self).items() if k != "mirror"}
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
        return f"debian-{self.release}-{self.arch}-{digest}"


@dataclass
class Timings:
    """Wall and CPU seconds per step, printed by the tests so the ARM64 check's cost can be quoted. CPU seconds
    (this process and the children it waited for, emulated ones included) hardly depend on how loaded the machine
    is; wall seconds do."""

    steps: dict[str, tuple[float, float]] = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        wall, cpu = time.monotonic(), _cpu_seconds()
        try:
            return fn(*args, **kwargs)
        finally:
            self.steps[name] = (time.monotonic() - wall, _cpu_seconds() - cpu)

    def __str__(self) -> str:
        return "; ".join(f"{name} {wall:.0f} s (CPU {cpu:.0f} s)" for name, (wall, cpu) in self.steps.items())


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _host_env() -> dict[str, str]:
    """The host's environment without what would leak this checkout or venv into a subprocess."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TUMOR_EDGE_MODEL")}


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def check_host() -> None:
    """The tools and rights the emulation needs; .ci/run installs the packages as root."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise Unavailable(f"the ARM64 emulation is set up for Linux x86_64 hosts, this is {sys.platform} "
                          f"{platform.machine()}")
    if os.geteuid() != 0:
        raise Unavailable("building and entering the arm64 root (debootstrap, chroot) needs root")
    missing = [tool for tool in (QEMU, "debootstrap", "chroot") if shutil.which(tool) is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not installed (Debian: apt-get install qemu-user-static "
                          "debootstrap binfmt-support; .ci/run does this as root)")


def enable_binfmt() -> None:
    """The kernel must hand aarch64 executables to qemu: mount binfmt_misc and enable Debian's qemu-aarch64 entry
    (its F flag keeps the interpreter open, so the root needs no copy of qemu)."""
    entry = BINFMT_DIR / "qemu-aarch64"
    if not (BINFMT_DIR / "status").exists():
        mount = subprocess.run(["mount", "binfmt_misc", "-t", "binfmt_misc", str(BINFMT_DIR)],
                               capture_output=True, text=True)
        if mount.returncode != 0:
            raise Unavailable(f"binfmt_misc is not mounted and cannot be: {_tail(mount.stderr, 2)}")
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, text=True)
    if not entry.exists():
        raise Unavailable(f"no qemu-aarch64 handler in {BINFMT_DIR} (update-binfmts --enable qemu-aarch64 failed; "
                          "is binfmt-support installed?)")
    if entry.read_text().splitlines()[0].strip() != "enabled":
        raise Unavailable(f"{entry} is disabled (update-binfmts --enable qemu-aarch64)")


def ensure_root(recipe: RootRecipe = RootRecipe(), timings: Timings | None = None) -> Path:
    """The cached root for this recipe, built first if absent. A lock serialises concurrent builders; the build
    happens in a temporary folder renamed into place only after debootstrap and a Python smoke run succeeded."""
    base = cache_dir()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Unavailable(f"cannot create the root cache {base}: {err.strerror}") from err
    final = base / recipe.key
    if (final / "usr/bin/python3").exists():
        return final
    with open(base / f"{recipe.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same root
        if (final / "usr/bin/python3").exists():
            return final
        for stale in base.glob(f".{recipe.key}.tmp-*"):  # left by an interrupted build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = base / f".{recipe.key}.tmp-{os.getpid()}"
        try:
            (timings or Timings()).run("debootstrap", _debootstrap, recipe, tmp)
            smoke = run_in_root(tmp, ["python3", "-c", "import platform, venv; print(platform.machine())"])
            if smoke.returncode != 0 or smoke.stdout.strip() != "aarch64":
                raise Unavailable(f"the new arm64 root does not run Python under qemu: {_tail(smoke.stderr)}")
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _debootstrap(recipe: RootRecipe, target: Path) -> None:
    cmd = ["debootstrap", f"--arch={recipe.arch}", f"--variant={recipe.variant}",
           f"--include={','.join(recipe.packages)}", recipe.release, str(target), recipe.mirror]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT_S, env=_host_env())
    except subprocess.TimeoutExpired as err:
        raise Unavailable(f"debootstrap of Debian {recipe.release} {recipe.arch} took over "
                          f"{DEBOOTSTRAP_TIMEOUT_S} s") from err
    if done.returncode != 0:
        log = target / "debootstrap/debootstrap.log"
        detail = log.read_text(errors="replace") if log.exists() else done.stdout + done.stderr
        raise Unavailable(f"debootstrap of Debian {recipe.release} {recipe.arch} failed (no network to "
                          f"{recipe.mirror}?): {_tail(detail, 3)}")


def run_in_root(root: Path, argv: list[str], timeout: float = INSTALL_TIMEOUT_S,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run argv inside the root (chroot; the kernel runs each aarch64 binary under qemu) with a clean environment:
    nothing from the host's, only a minimal PATH, HOME and a UTF-8 locale, plus `env`."""
    clean = {"PATH": ROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, timeout=timeout, env=clean)


def root_interpreter(root: Path) -> tuple[str, tuple[int, int]]:
    """('311', (2, 36)) for the root's python3 and glibc: what the downloaded wheels must match."""
    code = "import platform, sys; print(f'{sys.version_info[0]}{sys.version_info[1]}', platform.libc_ver()[1])"
    done = run_in_root(root, ["python3", "-c", code])
    if done.returncode != 0:
        raise Unavailable(f"the arm64 root's python3 does not run: {_tail(done.stderr)}")
    py, libc = done.stdout.split()
    major, minor = libc.split(".")[:2]
    return py, (int(major), int(minor))


def download_wheels(requirements: list[str], dest: Path, py: str, glibc: tuple[int, int]) -> list[Path]:
    """aarch64 wheels (and their dependencies) for the root's CPython, fetched on the host from the package
    registry, plus pip's own wheel (Device.pip_install runs it). Binary wheels only: a device should not compile.
    The platform tags are every manylinux glibc version up to the root's (pip does not expand them itself)."""
    platforms = [arg for minor in range(17, glibc[1] + 1) for arg in ("--platform", f"manylinux_2_{minor}_aarch64")]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", py,
           "--implementation", "cp", "--abi", f"cp{py}", *platforms, "-d", str(dest), "pip", *requirements]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=_host_env())
    if done.returncode != 0:
        raise Unavailable(f"pip could not download aarch64 wheels for {' '.join(requirements)} (no network to the "
                          f"package registry?): {_tail(done.stderr, 3)}")
    return sorted(dest.glob("*.whl"))


def prepare_root(requirements: list[str], wheel_dir: Path, timings: Timings) -> tuple[Path, list[Path]]:
    """Everything that may be Unavailable here, in order: the host, binfmt_misc, the cached root (built if
    absent) and the aarch64 wheels of `requirements` for its Python, downloaded into wheel_dir."""
    check_host()
    enable_binfmt()
    root = ensure_root(timings=timings)
    wheels = timings.run("download aarch64 wheels", download_wheels, requirements, wheel_dir,
                         *root_interpreter(root))
    return root, wheels


@dataclass
class Device:
    """A fresh venv in the root with tumor-edge installed from a wheel; `cli` runs `tumor-edge ...` there.
    Paths handed to the device must lie under `host_dir` (seen inside the root as `dir`)."""

    root: Path
    dir: str  # inside the root, e.g. /tmp/tumor-edge-<id>
    cpu: str = field(default_factory=lambda: os.environ.get(CPU_ENV) or DEFAULT_CPU)  # qemu's -cpu

    @property
    def host_dir(self) -> Path:
        return self.root / self.dir.lstrip("/")

    @property
    def venv(self) -> str:
        return f"{self.dir}/venv"

    @property
    def interpreter(self) -> tuple[str, tuple[int, int]]:
        return root_interpreter(self.root)

    def inside(self, host_path: Path) -> str:
        """The device's name for a host path under host_dir."""
        return "/" + str(Path(host_path).resolve().relative_to(self.root.resolve()))

    def run(self, argv: list[str], timeout: float = INSTALL_TIMEOUT_S) -> subprocess.CompletedProcess:
        return run_in_root(self.root, argv, timeout=timeout, env={
            "QEMU_CPU": self.cpu,  # read by qemu-user itself, whichever binary the kernel hands it
            "TUMOR_EDGE_CACHE_DIR": f"{self.dir}/cache", "XDG_STATE_HOME": f"{self.dir}/state"})

    def cli(self, *args: str, timeout: float = INSTALL_TIMEOUT_S) -> subprocess.CompletedProcess:
        return self.run([f"{self.venv}/bin/tumor-edge", *args], timeout=timeout)

    def pip_install(self, *requirements: str) -> subprocess.CompletedProcess:
        """Install from the wheels copied into the device only (no registry from inside the emulator), with pip
        run from its own wheel (pip supports that), so the venv needs no pip of its own."""
        (pip,) = (self.host_dir / "wheels").glob("pip-*.whl")
        return self.run([f"{self.venv}/bin/python", f"{self.dir}/wheels/{pip.name}/pip", "install", "-q",
                         "--no-index", "--no-cache-dir", "--disable-pip-version-check", "--find-links",
                         f"{self.dir}/wheels", *requirements])

    def remove(self) -> None:
        shutil.rmtree(self.host_dir, ignore_errors=True)


def new_device(root: Path, wheel: Path, wheels: list[Path]) -> Device:
    """A venv in the root with the tumor-edge wheel and the runtime's aarch64 dependencies installed, offline.
    A failure here is the product's (the wheel does not install on ARM64), so it raises AssertionError.

    The venv is made --without-pip: ensurepip alone costs 27 CPU seconds under the emulator, nearly as much as
    the whole install (31 s), and Debian would need python3-venv and with it ca-certificates, whose emulated
    openssl runs add minutes to debootstrap; pip runs from the wheel downloaded with the others instead."""
    device = Device(root, f"/tmp/tumor-edge-{uuid.uuid4().hex[:8]}")
    (device.host_dir / "wheels").mkdir(parents=True)
    for path in [wheel, *wheels]:
        shutil.copy2(path, device.host_dir / "wheels" / path.name)
    made = device.run(["python3", "-m", "venv", "--without-pip", device.venv])
    assert made.returncode == 0, f"python3 -m venv in the arm64 root failed: {made.stderr[-2000:]}"
    install = device.pip_install(f"{device.dir}/wheels/{wheel.name}")
    assert install.returncode == 0, f"the wheel does not install on arm64: {install.stderr[-3000:]}"
    return device
