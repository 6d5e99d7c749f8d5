"""rnnkit's compiled CPU code, built on first use: the kernel for the book's model, and
``rnnkit compress``'s model (:func:`compress_module`).

The book's configuration (a one-layer RNN with one-hot input, hidden 32, batch 1024) spends its
time in hundreds of tiny operations per step, not in arithmetic. ``csrc/rnn_lm.cpp`` computes
the loss and every gradient of a step in one call, one batch chunk per thread, with its own
vectorized tanh and softmax cross-entropy (about 2.5 times as fast as the same math as PyTorch
operations on a 2-core CPU; ``benchmarks/vs_d2l.py``, ``benchmarks/kernel_phases.py``). It is
compiled with ``torch.utils.cpp_extension`` (a C++ compiler with OpenMP, as for any PyTorch
extension; ninja comes with rnnkit) the first time it is needed, about 30 s, and cached in the
PyTorch extensions folder (``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``).
Without a compiler rnnkit says so once and runs the same math as PyTorch operations;
``RNNKIT_NO_KERNEL=1`` chooses that path explicitly. ``RNNKIT_KERNEL_CFLAGS`` adds compiler flags
(e.g. ``-mno-avx512f`` to build for a CPU without AVX-512; ``benchmarks/kernel_phases.py`` adds
``-DRNNKIT_PROFILE``); the build's name includes them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("csrc") / "rnn_lm.cpp"
COMPRESS_SOURCE = Path(__file__).with_name("csrc") / "compress.cpp"
STALE_LOCK_S = 600  # a build takes about 30 s; a lock this old belongs to a build that died
BUILDER_FILE = "builder"  # "pid host" of the process building (see remove_stale_lock)

_kernel: ModuleType | None = None
_tried = False
_why_not = ""  # why the last rnn_lm_kernel() gave None (see unavailable_reason)
_compress: ModuleType | None = None
_compress_tried = False


def compiler_flags() -> list[str]:
    """The kernel's compiler flags: rnnkit's, then ``$RNNKIT_KERNEL_CFLAGS``.

    The kernel is compiled on the machine that runs it, so on x86-64 it targets that CPU
    (``-march=native``: its tanh and softmax loops run 8 floats wide with AVX2, 16 with AVX-512,
    instead of SSE2's 4; measured on the book's step, kernel_phases.py: 7.3 ms with SSE2, 5.3 with
    AVX2, 4.8 with AVX-512), and the build's name includes the CPU (:func:`cpu_identity`), so that a
    build folder shared by different machines does not run one CPU's build on another.
    no-trapping-math: floating-point exception flags are never read here, and without it GCC keeps
    the branch-free selects of exp_approx/tanh_approx as branches (no vectorized loops)."""
    custom = os.environ.get("RNNKIT_KERNEL_CFLAGS", "").split()
    return ["-O3", "-fopenmp", "-fno-trapping-math", *native_flags(), *custom]


def native_flags() -> list[str]:
    """``-march=native`` on x86-64 (a build is for the machine that runs it, named by its CPU:
    :func:`cpu_identity`); nothing elsewhere."""
    return ["-march=native"] if platform.machine().lower() in ("x86_64", "amd64") else []


def cpu_identity() -> str:
    """This CPU's model and instruction-set flags (Linux: /proc/cpuinfo), for the build's name."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split("\n\n", 1)[0]
        return "\n".join(line for line in info.splitlines() if line.startswith(("model name", "flags", "Features")))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def build_name(source: Path | None = None, flags: list[str] | None = None, prefix: str = "rnnkit_rnn_lm") -> str:
    """The compiled module's name: changes with the source (its bytes and its path: the compile
    command names it, so two checkouts sharing one build folder would rebuild each other's), the
    compiler flags and the CPU, the torch build (version and install path: each virtual environment gets its
    own) and Python. Defaults: the book's kernel (:data:`SOURCE`, :func:`compiler_flags`)."""
    source = source or SOURCE
    key = (
        source.read_bytes()
        + str(source.resolve()).encode()
        + torch.__version__.encode()
        + str(Path(torch.__file__).parent).encode()
        + sys.version.encode()
        + " ".join(compiler_flags() if flags is None else flags).encode()
        + cpu_identity().encode()
    )
    return f"{prefix}_{hashlib.sha1(key).hexdigest()[:12]}"


def _build_directory(name: str) -> Path:
    base = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not base:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    return Path(base) / name


def _built_library(build_dir: Path, name: str) -> tuple[Path, float] | None:
    """(path, mtime) of the compiled library in ``build_dir``, or None."""
    for path in build_dir.glob(f"{name}*.so"):
        return path, path.stat().st_mtime
    return None


def remove_stale_lock(build_dir: Path) -> None:
    """PyTorch's build waits as long as its ``lock`` file exists, and a build that was killed
    (SIGKILL: no cleanup) leaves it behind. rnnkit notes who builds (``builder``: pid and host);
    the lock goes at once when that process is gone from this host, and in any case once it is
    :data:`STALE_LOCK_S` old (a build on another host sharing the folder, or an older rnnkit's)."""
    lock = build_dir / "lock"
    if not lock.exists():
        return
    try:
        pid, host = (build_dir / BUILDER_FILE).read_text().split()
        dead = host == socket.gethostname() and not _process_alive(int(pid))
    except (OSError, ValueError):
        dead = False
    if dead or time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink(missing_ok=True)
        (build_dir / BUILDER_FILE).unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's, alive
        return True
    return True


def rnn_lm_kernel() -> ModuleType | None:
    """The compiled module (``rnn_lm_loss``), or None where it cannot be built or is switched off.

    Every build says so on stderr, with its reason, before it starts (or, where the compiler
    decided on its own that the library was out of date, once it is done) and how long it took."""
    global _kernel, _tried, _why_not
    if _tried:
        return _kernel
    if switched_off():
        _tried, _why_not = True, "switched off (RNNKIT_NO_KERNEL)"
        return None
    try:
        _kernel = compile_extension(build_name(), SOURCE, compiler_flags(), "its CPU kernel for the book's model", 30)
        _warm_up(_kernel)
        _tried = True  # not before: a build cut short by Ctrl-C is tried again by the next call
    except Exception as exc:  # no compiler, no OpenMP, a read-only home...
        message = _last_line(exc)
        warnings.warn(
            f"rnnkit: CPU kernel not built ({message}); training runs as PyTorch operations "
            "(the same math, about half the speed for the book's model)",
            RuntimeWarning,
            stacklevel=2,
        )
        _kernel, _tried, _why_not = None, True, f"not built ({message})"
    return _kernel


def switched_off() -> bool:
    """Whether ``RNNKIT_NO_KERNEL`` asks for no compiled code."""
    return os.environ.get("RNNKIT_NO_KERNEL", "") not in ("", "0")


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if text else type(exc).__name__)[:200]


def compile_extension(name: str, source: Path, flags: list[str], what: str, seconds: int) -> ModuleType:
    """Load the extension ``name`` built from ``source`` with ``flags``, building it first where
    no build exists (``what`` and about how many ``seconds``: for the message on stderr). Raises
    whatever the build raises."""
    from torch.utils.cpp_extension import load

    build_dir = _build_directory(name)
    before = _built_library(build_dir, name)
    if before is None:
        print(
            f"rnnkit: compiling {what} (once per environment, about {seconds} s): "
            f"no build yet for this source, torch {torch.__version__} at {Path(torch.__file__).parent} "
            f"and Python {sys.version.split()[0]} in {build_dir}",
            file=sys.stderr,
            flush=True,
        )
    build_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_lock(build_dir)
    builder = build_dir / BUILDER_FILE
    builder.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + path  # pip's ninja, in a venv
    started = time.perf_counter()
    try:
        module = load(
            name,
            [str(source)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else [],
            build_directory=str(build_dir),
            verbose=False,
        )
    finally:
        os.environ["PATH"] = path
        builder.unlink(missing_ok=True)
    after = _built_library(build_dir, name)
    if before is None:
        print(f"rnnkit: compiled {what} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    elif after is not None and after[1] != before[1]:
        print(
            f"rnnkit: recompiled {what} in {time.perf_counter() - started:.0f} s (the build in "
            f"{build_dir} was out of date: its compiler command or headers changed)",
            file=sys.stderr,
            flush=True,
        )
    return module


def compress_flags() -> list[str]:
    """``csrc/compress.cpp``'s flags: optimised for this CPU, but never at the cost of a different
    result: ``-ffp-contract=off`` (no fused multiply-add) and ``-fno-fast-math`` come last, so that
    ``$RNNKIT_KERNEL_CFLAGS`` cannot undo them."""
    custom = os.environ.get("RNNKIT_KERNEL_CFLAGS", "").split()
    return ["-O3", *native_flags(), *custom, "-fno-fast-math", "-ffp-contract=off"]


def compress_module() -> ModuleType | None:
    """``rnnkit compress``'s compiled model (``Mixer``, ``MatVec``, ``sigmoid32``...), or None where
    ``RNNKIT_NO_KERNEL`` is set or it cannot be built (said once, as a warning): compression then
    runs the same arithmetic in Python and numpy (the same bits, slower)."""
    global _compress, _compress_tried
    if _compress_tried:
        return _compress
    if switched_off():
        _compress_tried = True
        return None
    flags = compress_flags()
    try:
        name = build_name(COMPRESS_SOURCE, flags, "rnnkit_compress")
        _compress = compile_extension(name, COMPRESS_SOURCE, flags, "rnnkit compress's model", 10)
        _compress_tried = True
    except Exception as exc:  # no compiler, a read-only home...
        warnings.warn(
            f"rnnkit: rnnkit compress's compiled model not built ({_last_line(exc)}); it runs in Python "
            "(the same bits, many times slower)",
            RuntimeWarning,
            stacklevel=2,
        )
        _compress, _compress_tried = None, True
    return _compress


def unavailable_reason() -> str:
    """Why :func:`rnn_lm_kernel` gave None: switched off, or the build's error (for messages)."""
    return _why_not or "not available"


def _warm_up(kernel: ModuleType) -> None:
    """Call the kernel once on a tiny batch, which runs on this thread alone, before any call that
    runs chunks on several threads. Without it, in about 1 process in 8, the first calls made by
    two threads at once into the BLAS library gave results differing in the last bits (a race in
    its lazy start-up, it seems); after one single-threaded call every result repeats exactly."""
    ids = torch.arange(6).remainder(3).view(2, 3)  # batch 2, 3 steps, vocabulary 3, hidden 4
    table, W = torch.linspace(-0.5, 0.5, 12).view(3, 4), torch.linspace(-0.5, 0.5, 16).view(4, 4)
    for relu in (False, True):
        kernel.rnn_lm_loss(ids, ids, torch.zeros(2, 4), table, W, table, torch.zeros(3), relu, True)
