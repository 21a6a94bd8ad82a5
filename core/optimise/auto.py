"""``--precision auto``: the fastest backend that agrees with FP32, measured on this machine.

The fastest way to run a model depends on the CPU (docs/architecture.md, "CPU backends"):
BF16 + ``torch.compile`` on AMX, ONNX Runtime INT8 on AVX2 where BF16 is emulated. So
Seamline measures rather than guesses: on first use of a model at a tile size on a machine,
:func:`choose_backend` builds every candidate (FP32 eager channels-last, FP32 compiled, BF16
autocast and BF16 compiled where the CPU has native BF16, INT8 on ONNX Runtime; on CUDA FP32,
BF16 and FP16, eager and compiled), times its forward on the calibration tiles, keeps those whose
classes agree with FP32 on at least :data:`MIN_AGREEMENT` of the pixels, and picks the
fastest. The choice and the whole table are cached on disk (:mod:`seamline.core.diskcache`)
keyed by the model's weights, the tile, the batch, the device, the CPU capability and the
torch and ONNX Runtime versions; later processes build only the chosen backend (the INT8
graph and the compiled code, an AOTInductor package, come from the disk cache).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import xarray as xr

from seamline.core.data.files import first_line
from seamline.core.diskcache import digest, model_fingerprint, read_json_entry, write_entry
from seamline.core.errors import InvalidArgumentError
from seamline.core.hardware import bf16_is_native, cpu_info, device_label
from seamline.core.models.modelio import SegmentationModel, with_precision
from seamline.core.optimise.backends import compiled, forget_compiled, use_inductor_cache
from seamline.core.optimise.flops import (
    MIN_AGREEMENT,
    agreement,
    classes_of,
    input_format,
    judged,
    ms_per_tile,
    peak_gflops,
    scene_agreement,
    tile_gflop,
)
from seamline.core.optimise.quantize import (
    calibration_tiles,
    quantize,
    quantized_before,
    quantized_graph,
)
from seamline.core.predict.stream import place_module

__all__ = [
    "AUTO_MIN_TILES",
    "BACKENDS",
    "MIN_AGREEMENT",
    "Backend",
    "Choice",
    "Measurement",
    "auto_backend",
    "build_backend",
    "cached_choice",
    "candidates",
    "choose_backend",
    "learn_job",
    "not_measured",
]

CHOICE_VERSION = 6  # 6: INT8 graphs upsample by Gather (optimise/upsample.py), ~12 % faster
AUTO_MIN_TILES = 16
"""Scenes with fewer tiles than this run FP32 unless a choice was made before on the machine."""


@dataclass(frozen=True)
class Backend:
    """One way to run a model: a precision, eager or compiled."""

    name: str
    precision: str
    compile: bool = False


BACKENDS = {
    b.name: b
    for b in (
        Backend("fp32", "fp32"),
        Backend("fp32+compile", "fp32", compile=True),
        Backend("bf16", "bf16"),
        Backend("bf16+compile", "bf16", compile=True),
        Backend("fp16", "fp16"),
        Backend("fp16+compile", "fp16", compile=True),
        Backend("int8", "int8"),
    )
}


def candidates(device: torch.device | str = "cpu") -> list[Backend]:
    """The backends worth measuring on ``device``: BF16 only where it is native (on an AVX2
    CPU it is emulated, ~3x slower than FP32), FP16 only on CUDA (CPUs emulate it), INT8
    (ONNX Runtime) only on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return [b for b in BACKENDS.values() if b.precision in ("fp32", "fp16") or
                (b.precision == "bf16" and bf16)]  # fmt: skip
    native = bf16_is_native()
    return [b for b in BACKENDS.values()
            if b.precision in ("fp32", "int8") or (b.precision == "bf16" and native)]


@dataclass(frozen=True)
class Measurement:
    """One backend measured: its speed, its agreement with FP32 and its build cost."""

    backend: str
    ms_per_tile: float
    agreement: float
    build_s: float
    gflops: float
    kept: bool
    note: str = ""
    warm_build_s: float = 0.0  # what a later process pays to build it, caches warm
    job_ms_per_tile: float | None = None  # per tile in the fastest job it ran (learn_job)

    def job_seconds(self, tiles: float, overhead: float = 1.0) -> float:
        """Build (warm) plus ``tiles`` tiles: as the fastest job it ran cost per tile (reading,
        blending and writing included), else as its forward pass times ``overhead`` (what
        jobs of its kind cost over their forwards: :meth:`Choice.job_overhead`)."""
        per_tile = self.job_ms_per_tile or self.ms_per_tile * overhead
        return self.warm_build_s + tiles * per_tile / 1000


@dataclass(frozen=True)
class Choice:
    """The backend chosen, the table it was chosen from, why, and where."""

    backend: str
    reason: str
    measurements: tuple[Measurement, ...]
    tile_size: int
    batch_size: int
    device: str
    cpu: str
    gflop_per_tile: float
    from_cache: bool = False
    peaks: dict = field(default_factory=dict)
    key: str = ""  # its disk cache entry
    int8_graph: str = ""  # the INT8 graph's disk cache key: calibrated once, for every job

    def table(self) -> list[dict]:
        """One row per backend: its figures, speed-up over FP32 eager and share of the peak
        GFLOP/s this CPU measured at its precision (``None`` where there is no peak)."""
        fp32 = next(m for m in self.measurements if m.backend == "fp32").ms_per_tile
        rows = []
        for m in self.measurements:
            peak = self.peaks.get(BACKENDS[m.backend].precision)
            rows.append(asdict(m) | {
                "speedup": fp32 / m.ms_per_tile,
                "percent_of_peak": 100 * m.gflops / peak if peak else None,
                "chosen": m.backend == self.backend,
            })  # fmt: skip
        return rows

    def best_for(self, tiles: float, *, compiled: bool = True) -> Measurement:
        """The kept backend that finishes ``tiles`` tiles first, its warm build included: a
        compiled backend pays seconds once per process, so a small job runs eager.
        ``compiled=False`` leaves compiled ones out (a model sent to dask workers)."""
        kept = [m for m in self.measurements
                if m.kept and (compiled or not BACKENDS[m.backend].compile)]  # fmt: skip
        if math.isinf(tiles):  # an endless job (a server): the build does not count
            return min(kept, key=lambda m: m.ms_per_tile)
        return min(kept, key=lambda m: m.job_seconds(tiles, self.job_overhead(m)))

    def job_overhead(self, row: Measurement) -> float:
        """How much longer than their forwards jobs of ``row``'s kind took per tile, the least
        of those that taught one (1 where none did). INT8's calls in flight overlap the rest
        of a job; the others run it in turn: eager BF16 cost 81 ms a tile in a job against
        49 alone, and tried on its forward alone it cost an 8192^2 job 11 s (AMD EPYC)."""
        in_flight = BACKENDS[row.backend].precision == "int8"
        ratios = [m.job_ms_per_tile / m.ms_per_tile for m in self.measurements
                  if m.job_ms_per_tile and (BACKENDS[m.backend].precision == "int8") == in_flight]
        return min(ratios, default=1.0)

    def to_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Choice:
        """The inverse of :meth:`to_dict`."""
        rows = tuple(Measurement(**row) for row in data["measurements"])
        return cls(**data | {"measurements": rows})


def build_backend(
    model: SegmentationModel,
    backend: Backend,
    *,
    calibration: np.ndarray,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    cache: bool = True,
) -> SegmentationModel:
    """``model`` (FP32) made ready to run as ``backend``; INT8 calibrates on ``calibration``
    (normalised tiles), from the disk cache when it was done before on this machine."""
    if backend.precision == "int8":
        built = quantize(model, calibration, cache=cache)
    elif backend.precision in ("bf16", "fp16"):
        built = with_precision(model, backend.precision)
    else:
        built = model
    if backend.compile:
        fast = compiled(built.module, batch=batch_size, device=device, cache=cache)
        built = built.with_module(fast, precision=built.precision)
    return built


def _device_name(device: torch.device | str) -> str:
    """``device`` as tensors name it (``cuda`` -> ``cuda:0``): one cache entry per device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _key(model: SegmentationModel, tile_size: int, batch_size: int, device: str,
         names: list[str]) -> str:  # fmt: skip
    import onnxruntime

    info = cpu_info()
    if device.startswith("cuda"):  # the same index can be another GPU on another machine
        props = torch.cuda.get_device_properties(device)
        device = f"{device} {props.name} sm{props.major}{props.minor}"
    return digest([
        model_fingerprint(model.module), str(tile_size), str(batch_size), device,
        f"{info['capability']} amx={info['amx']} vnni={info['avx512_vnni']} "
        f"threads={info['torch_threads']}", torch.__version__, onnxruntime.__version__,
        ",".join(names), str(CHOICE_VERSION),
    ])  # fmt: skip


def _warm_build_seconds(model, backend, calibration, batch_size, device, tiles,
                        cache) -> float | None:  # fmt: skip
    """What a later process pays for a backend kept on disk: a compiled package loaded
    (0.01-0.1 s where compiling took 17; compiled again without a cache), an INT8 graph
    loaded (0.1 s where calibrating took 8). None for the others: their build is measured."""
    if not backend.compile and not (backend.precision == "int8" and cache):
        return None
    forget_compiled()
    start = time.perf_counter()
    built = build_backend(model, backend, calibration=calibration, batch_size=batch_size,
                          device=device, cache=cache)  # fmt: skip
    classes_of(built, tiles[:batch_size], batch_size)
    return time.perf_counter() - start


def _reason(choice: Choice, backend: Backend, tiles: int | None) -> str:
    """Why ``backend`` was picked from ``choice``'s table, in one line."""
    row = next(m for m in choice.measurements if m.backend == backend.name)
    fp32 = next(m for m in choice.measurements if m.backend == "fp32")
    last = row.job_ms_per_tile
    learned = f", {last:.1f} ms a tile in its fastest job" if last else ""
    build = f", {row.warm_build_s:.1f} s build included" if row.warm_build_s >= 0.05 else ""
    job = "per tile" if tiles is None else f"for {tiles} tile{'s' * (tiles != 1)}{build}{learned}"
    return (f"{backend.name}: {row.ms_per_tile:.1f} ms per {choice.tile_size} px tile, fastest "
            f"{job} ({fp32.ms_per_tile / row.ms_per_tile:.1f}x FP32 eager per tile), classes "
            f"equal to FP32's on {row.agreement:.2%} of the calibration pixels")


def cached_choice(
    model: SegmentationModel,
    *,
    tile_size: int,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    backends: list[Backend] | None = None,
) -> Choice | None:
    """The choice :func:`choose_backend` made before on this machine, or None."""
    device = _device_name(device)
    backends = backends or candidates(device)
    return _read_choice(_key(model, tile_size, batch_size, device, [b.name for b in backends]))


def _read_choice(key: str) -> Choice | None:
    """The choice stored under ``key``, or None."""
    stored = read_json_entry("backends", key)
    if stored is None:
        return None
    try:
        return Choice.from_dict(stored | {"from_cache": True})
    except (ValueError, TypeError, KeyError):
        return None  # an entry of another version: measured again


def auto_backend(
    model: SegmentationModel,
    scene: xr.DataArray,
    *,
    tile_size: int,
    tiles: int | None = None,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    cache: bool = True,
    allow_compile: bool = True,
    notify: Callable[[str], None] | None = None,
    calibrate: bool = False,
    job_scene: xr.DataArray | None = None,
) -> tuple[SegmentationModel, Choice | None]:
    """``model`` as the backend that finishes a job of ``tiles`` tiles first (None: a
    server's endless job, the fastest per tile), from the table :func:`choose_backend`
    measured (calibrated on tiles of ``scene``), and that choice. A model that is not FP32
    (a quantized ``.onnx``) runs as it is. A job smaller than :data:`AUTO_MIN_TILES` tiles
    is not worth measuring for (the measurement costs more than the prediction): it gets the
    table measured before on this machine if there is one, else FP32 (choice None).
    ``allow_compile=False`` measures and picks eager backends only (a compiled module does
    not travel to dask workers, and a server would recompile per requested tile size).
    ``notify`` is told, in a phrase, when a measurement starts (it takes up to a minute).
    INT8 runs the graph the table keeps (calibrated once, on the scene first measured on)
    unless ``calibrate`` (the caller's own calibration scene) or the graph left the cache:
    then it is calibrated on ``scene``, checked against FP32 on those tiles (and on tiles of
    ``job_scene``, the job's own scene where ``scene`` is another), and kept for later jobs
    if it agrees on both (else INT8 leaves the table and the next backend runs)."""
    if model.precision != "fp32":
        return model, None
    backends = [b for b in candidates(device) if allow_compile or not b.compile]
    choice = cached_choice(model, tile_size=tile_size, batch_size=batch_size, device=device,
                           backends=backends) if cache else None  # fmt: skip
    if choice is None and (tiles is not None and tiles < AUTO_MIN_TILES):
        return model, None
    calibration = None
    if choice is None:
        if notify is not None:
            once = "once on this machine" if cache else "not kept: --no-cache"
            notify(f"measuring {len(backends)} backends for model {model.name!r} at "
                   f"{tile_size} px tiles, {once} (a minute at most; --precision fp32 skips "
                   "it)")  # fmt: skip
        calibration = calibration_tiles(scene, model, tile_size=tile_size)
        choice = choose_backend(model, calibration, tile_size=tile_size, batch_size=batch_size,
                                device=device, cache=cache, backends=backends)  # fmt: skip
    job = float("inf") if tiles is None else tiles
    backend = BACKENDS[choice.best_for(job, compiled=allow_compile).backend]
    start = time.perf_counter()
    # INT8 as calibrated when it was measured (on the first scene, for every later one): no
    # tiles read, hashed or calibrated again (0.5 s a process at 4096^2, 6-8 s a new scene)
    built = None
    if backend.precision == "int8" and cache and choice.int8_graph and not calibrate:
        built = quantized_graph(model, choice.int8_graph)
    if built is None:
        if backend.precision == "int8":  # calibrated on this scene
            calibration = calibration_tiles(scene, model, tile_size=tile_size)
            if cache and not calibrate and not quantized_before(model, calibration):
                int8 = next(m for m in choice.measurements if m.backend == backend.name)
                choice = _with_build_seconds(choice, backend, int8.build_s)  # it calibrates
                backend = BACKENDS[choice.best_for(job, compiled=allow_compile).backend]
        use_inductor_cache(cache)
        built = build_backend(model, backend, calibration=calibration, batch_size=batch_size,
                              device=device, cache=cache)  # fmt: skip
    # Keep an INT8 graph calibrated here for the next jobs (in the stored table: this choice
    # may carry this job's calibration); else learn what a new process pays to build its
    # backend: a compiled package loaded (or compiled again), the INT8 graph read.
    quantized = built.metadata.get("quantization")
    graph = quantized["key"] if quantized and cache else None
    row = None
    if graph and graph != choice.int8_graph:
        sample = torch.from_numpy(calibration).to(device)
        row = judged(agreement(classes_of(built, sample, batch_size),
                               classes_of(model, sample, batch_size)), "recalibrated: agrees")
    if quantized and job_scene is not None and (row is None or row["kept"]):
        row = judged(scene_agreement(built, model, job_scene, tile_size=tile_size,
                                     batch_size=batch_size, device=device),
                     "calibrated on another scene: agrees on this job's")  # fmt: skip
    if row is not None:
        keep = {"int8_graph": graph} if row["kept"] and graph else {}
        choice = _with_row(replace(choice, **keep), backend.name, **row)
        if cache:
            _store(_with_row(replace(_read_choice(choice.key) or choice, **keep), backend.name,
                             **row))  # fmt: skip
        if not row["kept"]:  # the table no longer has INT8: the next fastest runs
            return auto_backend(model, scene, tile_size=tile_size, tiles=tiles,
                                batch_size=batch_size, device=device,
                                allow_compile=allow_compile) if cache else (model, replace(
                choice, backend="fp32", reason=_reason(choice, BACKENDS["fp32"], tiles)))
    elif (quantized["from_cache"] if quantized else backend.compile) and choice.from_cache:
        probe = torch.zeros(batch_size, len(model.bands), tile_size, tile_size, device=device)
        classes_of(built, probe, batch_size)
        choice = _with_build_seconds(choice, backend, time.perf_counter() - start)
        if cache:
            _store(choice)
    return built, replace(choice, backend=backend.name, reason=_reason(choice, backend, tiles))


def learn_job(choice: Choice, seconds: float, tiles: int) -> Choice:
    """``choice`` with what its backend just cost per tile in a job of ``tiles`` tiles that
    took ``seconds`` (reading, blending and writing included), kept in its disk cache entry
    for the next job's pick: INT8's calls in flight overlap the rest of a job, which runs in
    turn with a compiled module (AMD EPYC, AVX-512, 4096^2: 49 against 58 ms a tile in the
    job, 36 against 39 alone). Jobs under :data:`AUTO_MIN_TILES` tiles teach nothing. The
    fastest job a backend ran is kept (a job slowed by other work would rank it last for
    good). The stored table is updated, not ``choice`` (it may carry a calibration's cost)."""
    stored = _read_choice(choice.key) if tiles >= AUTO_MIN_TILES and seconds > 0 else None
    if stored is None:
        return choice
    known = next((m.job_ms_per_tile for m in stored.measurements
                  if m.backend == choice.backend), None)  # fmt: skip
    per_tile = min(1000 * seconds / tiles, known or math.inf)
    learned = _with_row(stored, choice.backend, job_ms_per_tile=per_tile)
    _store(learned)
    return learned


def not_measured(name: str, exc: BaseException) -> str:
    """The warning where auto could not measure model ``name`` (``exc`` says why)."""
    return f"--precision auto could not measure model {name!r} ({first_line(exc)}): it runs FP32."


def _with_build_seconds(choice: Choice, backend: Backend, seconds: float) -> Choice:
    """``choice`` with ``backend``'s warm build cost set to ``seconds`` (one just observed:
    the measuring process can miss what a new one pays)."""
    return _with_row(choice, backend.name, warm_build_s=seconds)


def _with_row(choice: Choice, backend: str, **figures) -> Choice:
    """``choice`` with ``figures`` changed in ``backend``'s row of its table."""
    rows = tuple(replace(m, **figures) if m.backend == backend else m
                 for m in choice.measurements)  # fmt: skip
    return replace(choice, measurements=rows)


def _store(choice: Choice) -> None:
    """Write ``choice`` to its disk cache entry."""
    data = json.dumps(replace(choice, from_cache=False).to_dict()).encode()
    write_entry("backends", choice.key, ".json", data)


def choose_backend(
    model: SegmentationModel,
    calibration: np.ndarray,
    *,
    tile_size: int,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    cache: bool = True,
    backends: list[Backend] | None = None,
    remeasure: bool = False,
) -> Choice:
    """The fastest of ``backends`` (default :func:`candidates`) whose classes agree with FP32
    on at least :data:`MIN_AGREEMENT` of ``calibration``'s pixels (normalised tiles
    ``(n, bands, tile_size, tile_size)``), measured here or read from the disk cache
    (``remeasure``: measured again and kept in place of a table measured on a busy machine).
    INT8 is calibrated on ``calibration`` once: its graph's cache key is kept in the choice,
    and later jobs run that graph whatever scene they predict."""
    if model.precision != "fp32":
        raise InvalidArgumentError(
            f"--precision auto starts from the FP32 model, and {model.name!r} is "
            f"{model.precision}: pass the FP32 model, or run it at its own precision."
        )
    device = _device_name(device)
    backends = backends or candidates(device)
    key = _key(model, tile_size, batch_size, device, [b.name for b in backends])
    stored = _read_choice(key) if cache and not remeasure else None  # weights hashed once
    if stored is not None:
        return stored
    use_inductor_cache(cache)
    tiles = torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32)).to(device)
    if isinstance(model.module, torch.nn.Module):  # on the device, in the tiles' layout
        place_module(model.module, tiles.device, input_format(model))
    reference = classes_of(model, tiles, batch_size)
    gflop = tile_gflop(model, tile_size, device)
    rows, int8_graph = [], ""
    for backend in backends:
        start = time.perf_counter()
        try:
            built = build_backend(model, backend, calibration=calibration,
                                  batch_size=batch_size, device=device, cache=cache)  # fmt: skip
            if built.precision != backend.precision:  # e.g. INT8 left FP32 (not exportable)
                raise RuntimeError(f"it stayed {built.precision}")
            classes = classes_of(built, tiles, batch_size)  # also the compile, for compiled ones
        except Exception as exc:  # noqa: BLE001 -- any backend may fail on a foreign model
            rows.append(Measurement(backend.name, float("nan"), float("nan"), 0.0, float("nan"),
                                    False, f"failed: {type(exc).__name__}"))  # fmt: skip
            continue
        build_s = time.perf_counter() - start
        warm = _warm_build_seconds(model, backend, calibration, batch_size, device, tiles, cache)
        warm = build_s if warm is None else warm
        if backend.precision == "int8":
            int8_graph = built.metadata["quantization"]["key"] or ""
        ms = ms_per_tile(built, tiles, batch_size, tile_size)
        rows.append(Measurement(backend.name, ms, build_s=build_s, gflops=gflop / ms * 1000,
                                warm_build_s=warm,
                                **judged(agreement(classes, reference))))  # fmt: skip
    precisions = ("fp32", "bf16", "int8") if device == "cpu" else ("fp32", "bf16", "fp16")
    peaks = {p: peak_gflops(p, device=device) for p in precisions}
    choice = Choice("fp32", "", tuple(rows), tile_size, batch_size, device,
                    device_label(device), gflop, peaks=peaks, key=key,
                    int8_graph=int8_graph)  # fmt: skip
    best = BACKENDS[choice.best_for(float("inf")).backend]
    choice = replace(choice, backend=best.name, reason=_reason(choice, best, None))
    if cache:
        _store(choice)
    return choice
