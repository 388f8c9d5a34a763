"""ArrowQuantV2: the seed's Python API over the C++ pipeline."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import arrowquant._core as _core
from arrowquant import single_file
from arrowquant.config import GPTQ_2BIT_GROUP_SIZE, DiffusionQuantConfig
from arrowquant.errors import ArrowQuantIOError, ConfigurationError, UnsupportedError
from arrowquant.model import file_bytes
from arrowquant.report import QuantizationReport

MODEL_FILE: str = _core.MODEL_FILE_NAME
ProgressCallback = Callable[[int, int, str], Any]


def resolve_calibration(
    model_path: str | os.PathLike[str], cfg: DiffusionQuantConfig
) -> tuple[DiffusionQuantConfig, dict[str, str]]:
    """The config with calibration "auto" resolved, and which path runs and why (the report and
    the file's recipe say it)."""
    import dataclasses

    if cfg.calibration != "auto":
        if cfg.calibration:
            return cfg, {"path": "calibrated", "why": f"calibration {cfg.calibration!r}"}
        return cfg, {"path": "weight-only", "why": "calibration off"}
    from arrowquant.checkpoint import load_checkpoint
    from arrowquant.diffusion import drivable, load_reference
    from arrowquant.masked_diffusion import is_masked_lm, load_masked_lm

    if is_masked_lm(model_path):
        load_checkpoint(os.fspath(model_path))
        try:
            load_masked_lm(model_path)
        except UnsupportedError as e:
            return dataclasses.replace(cfg, calibration=""), {
                "path": "weight-only",
                "why": f"auto: cannot drive the masked LM: {e}",
            }
        return dataclasses.replace(cfg, calibration="synthetic"), {
            "path": "calibrated",
            "why": "auto: a masked diffusion LM the tool can drive (mask ratio as timestep); "
            "the FP model's own generations",
        }
    ok, why = drivable(model_path, cfg.model_config)
    if ok and Path(model_path).is_dir():
        # A malformed file: the reader's typed error, as on the weight-only path.
        load_checkpoint(os.fspath(model_path))
        try:
            load_reference(model_path)
        except UnsupportedError as e:  # the folder says it can be sampled, but cannot be loaded
            ok, why = False, f"cannot sample: {e}"
    chosen = "synthetic" if ok else ""
    out = dataclasses.replace(cfg, calibration=chosen)
    if ok:
        return out, {"path": "calibrated", "why": f"auto: {why}; the FP model's own samples"}
    return out, {"path": "weight-only", "why": f"auto: {why}"}


def _calibrated_format(cfg: DiffusionQuantConfig, calibrated: bool) -> DiffusionQuantConfig:
    """The weight format under GPTQ, where the caller did not choose one (docs/benchmarks.md):
    - grid: GPTQ feeds each column's rounding error forward, which is what the error-minimizing
      grid does for round to nearest; end to end the min/max grid under GPTQ is as good or
      better at 2-4 bits on both reference models, the search better at 8. So widths up to
      4 bits take the min/max grid.
    - groups: at a 2-bit profile, 64 instead of 32. There a group's scale and offset (12 bits)
      are a fifth of its codes' bits at 32 and a tenth at 64, and GPTQ compensates within the
      group what the smaller group would fit; the bytes saved buy wider layers where the
      allocator measures they matter. At the edge profile's 2.7 bits: +4.1 dB on the DiT, +2.7
      dB on the DDPM (256 paired samples). At 3-4 bits it was mixed (DiT +0.3 / +1.1 dB, DDPM
      -0.3 / -1.5 dB at compact / local), so wider profiles keep 32."""
    import dataclasses

    if not (calibrated and cfg.gptq):
        return cfg
    if cfg.method is None and cfg.bits <= 4:
        cfg = dataclasses.replace(cfg, method="minmax")
    if cfg.group_size is None and cfg.bits <= 2:
        cfg = dataclasses.replace(cfg, group_size=GPTQ_2BIT_GROUP_SIZE)
    return cfg


def component_profiles(
    model_path: str | os.PathLike[str], cfg: DiffusionQuantConfig
) -> dict[str, str]:
    """Component -> profile ("keep": left unquantized) for a pipeline folder or a single file of
    several components (by prefix: arrowquant.checkpoint.Checkpoint.naming): the config's
    `components` and the defaults for the components it has; {} for a lone model with none
    named (a component named for one is the pipeline's error, naming what it has)."""
    from arrowquant.checkpoint import load_checkpoint

    root = Path(model_path)
    present: list[str] = []
    if (root / "model_index.json").is_file():
        present = [c["name"] for c in load_checkpoint(os.fspath(root)).components if c["name"]]
    elif root.is_dir() or root.suffix in (".safetensors", ".json"):
        # A single file of several components (original/LDM, FLUX, SD3 layouts): by prefix.
        present = [c["name"] for c in load_checkpoint(os.fspath(root)).naming["components"]]
    return cfg.component_profiles(present) if len(present) > 1 or cfg.components else {}


def set_components(
    core: Any, cfg: DiffusionQuantConfig, profiles: dict[str, str], calibrated: bool
) -> None:
    """Gives each component of `profiles` its profile's settings in the pipeline's config
    (`core`), on top of `cfg` (the user's, before the calibrated path's format defaults); with
    a measured allocation, each component is sized by its own profile."""
    for name, profile in profiles.items():
        if profile == "keep":
            core.keep_component(name)
            continue
        own = _calibrated_format(cfg.for_component(profile), calibrated)
        own_core = own.to_core()
        if core.allocate:
            own_core.allocate = True
            own_core.target_bpw = own.size_bpw
        core.set_component(name, own_core)


@dataclasses.dataclass
class CoreInputs:
    """What the C++ pipeline's config is built from (picklable: a job run in parts on other
    processes builds the same config from it)."""

    cfg: DiffusionQuantConfig
    chosen: DiffusionQuantConfig  # the user's, before the calibrated path's format defaults
    recipe_json: str
    plans: dict[str, Any]
    moments: dict[str, Any]  # {name: (fit, check)} SecondMoments
    sensitivity: dict[str, list[float]]
    profiles: dict[str, str]
    calibrated: bool

    def core(self) -> Any:
        cfg = self.cfg
        core = cfg.to_core(self.recipe_json)
        core.set_activations(self.plans)
        # No held-out rows (a layer called once with one row): validated on weight error.
        core.set_moments({k: (f, c if c.count else None) for k, (f, c) in self.moments.items()})
        if self.sensitivity:
            core.set_sensitivity(self.sensitivity)
            if cfg.allocate and not cfg.fail_fast and not cfg.target_bpw:  # fail-fast: thresholds
                core.allocate = True
                core.target_bpw = cfg.size_bpw
        set_components(core, self.chosen, self.profiles, self.calibrated)
        return core


def _import_plotting() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


class ArrowQuantV2:
    """Quantizes diffusion models: `quantize_diffusion_model(model, out_folder)`."""

    def quantize_diffusion_model(
        self,
        model_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        config: DiffusionQuantConfig | None = None,
        progress_callback: ProgressCallback | None = None,
        overwrite: bool = False,
        allow_pickle: bool = False,
        _calibration: tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]
        | None = None,
    ) -> QuantizationReport:
        """Writes `output_path/` with model.aq.parquet, report.json and report.md.

        The folder appears complete or not at all: everything is written to a temporary folder
        beside it and renamed at the end. progress_callback(done_bytes, total_bytes, tensor) runs
        on this thread; returning False or raising cancels the run (the exception propagates).
        """
        cfg = config or DiffusionQuantConfig.resolve()
        out = Path(output_path)
        if not out.parent.exists():
            raise ArrowQuantIOError(f"{out.parent}: no such folder", "IoError")
        with output_lock(out):
            if out.exists() and not overwrite:
                raise ConfigurationError(
                    f"{out}: already exists (pass overwrite=True / --overwrite)"
                )
            _remove_stale_temporaries(out)
            from arrowquant.gguf import convert_gguf
            from arrowquant.pickle_import import convert_pickle, is_pickle_path

            # Inputs that are not SafeTensors go through a temporary SafeTensors copy.
            convert = None
            if allow_pickle and is_pickle_path(model_path):
                convert = convert_pickle
            elif Path(model_path).suffix == ".gguf" and Path(model_path).is_file():
                convert = convert_gguf
            if convert is not None:
                import tempfile

                with tempfile.TemporaryDirectory(prefix="arrowquant-convert-") as d:
                    converted = convert(model_path, Path(d))
                    return self._quantize_locked(converted, out, cfg, progress_callback)
            return self._quantize_locked(model_path, out, cfg, progress_callback, _calibration)

    def _quantize_locked(
        self,
        model_path: str | os.PathLike[str],
        out: Path,
        cfg: DiffusionQuantConfig,
        progress_callback: ProgressCallback | None,
        precomputed: tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]
        | None = None,
    ) -> QuantizationReport:
        """`precomputed`: (plans, summary, moments, sensitivity) recorded elsewhere
        (quantize_module)."""
        from arrowquant import __version__

        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
        except OSError as e:
            raise ArrowQuantIOError(
                f"{out}: cannot create the output ({e.strerror})", "IoError"
            ) from None
        t0 = time.perf_counter()
        stack = contextlib.ExitStack()  # a single file's built pipeline, while calibration runs
        built: single_file.Built | None = None
        sampled: str | os.PathLike[str] = model_path  # what calibration samples
        try:
            if cfg.output_format == "gguf" and precomputed is None:
                from arrowquant.gguf import quantize_job

                threading.Thread(target=_import_plotting, daemon=True).start()
                return _publish(
                    quantize_job(model_path, out, tmp, cfg, progress_callback, t0), tmp, out
                )
            if precomputed is None:
                cfg, path = resolve_calibration(model_path, cfg)
            else:
                path = {"path": "calibrated", "why": "quantize_module with calibrate=run"}
            chosen = cfg  # before the calibrated path's format defaults: components apply theirs
            cfg = _calibrated_format(cfg, path["path"] == "calibrated")
            recipe: dict[str, Any] = {
                "config": cfg.recipe(),
                "tool": f"arrowquant {__version__}",
                "path": path,
            }
            profiles = component_profiles(model_path, cfg)
            if profiles:
                recipe["components"] = profiles
            plans: dict[str, Any] = {}
            moments: dict[str, Any] = {}
            sensitivity: dict[str, Any] = {}
            if cfg.ray:  # one cluster session for calibration's batches and the job's tensors
                from arrowquant import scale_out

                stack.enter_context(scale_out.session(cfg.ray))
            if precomputed is not None:
                plans, recipe["calibration"], moments, sensitivity = precomputed
            elif cfg.calibration:
                from arrowquant.calibration import calibrate

                if single_file.naming(model_path) is not None:
                    # Sampled through the diffusers pipeline built from the file.
                    built = stack.enter_context(single_file.built(model_path, cfg.model_config))
                    sampled = built.folder
                plans, recipe["calibration"] = calibrate(
                    sampled,
                    cfg,
                    moments=moments if cfg.gptq else None,
                    sensitivity=sensitivity if cfg.gptq and cfg.allocate else None,
                )
                if built is not None:
                    plans, moments = built.to_file(plans), built.to_file(moments)
                    sensitivity = built.to_file(sensitivity)
                    recipe["calibration"]["single_file"] = built.summary
            job = CoreInputs(
                cfg,
                chosen,
                json.dumps(recipe),
                plans,
                moments,
                {k: v.tolist() for k, v in sensitivity.items()},
                profiles,
                path["path"] == "calibrated",
            )
            # The report's plot needs matplotlib (~0.5 s to import): imported meanwhile, while
            # the pipeline runs without the GIL.
            threading.Thread(target=_import_plotting, daemon=True).start()
            if cfg.ray:
                from arrowquant.scale_out import run_on_ray

                raw = run_on_ray(
                    str(model_path), tmp / MODEL_FILE, job, progress_callback, cfg.limits()
                )
            else:
                raw = _core.run_pipeline(
                    str(model_path),
                    str(tmp / MODEL_FILE),
                    job.core(),
                    progress_callback,
                    cfg.limits(),
                )
            if cfg.calibration and precomputed is None:
                from arrowquant.masked_diffusion import is_masked_lm

                if is_masked_lm(model_path):
                    from arrowquant.calibration.masked import nll_check

                    recipe["calibration"]["nll_check"] = nll_check(
                        model_path, tmp / MODEL_FILE, cfg
                    )
                else:
                    from arrowquant.calibration.check import one_step_check

                    recipe["calibration"]["one_step_check"] = one_step_check(
                        sampled, tmp / MODEL_FILE, cfg, built
                    )
            seconds = time.perf_counter() - t0
            report = QuantizationReport(
                model_path=str(model_path),
                output_path=str(out),
                modality=raw["modality"],
                modality_reason=raw["modality_reason"],
                config=cfg.to_dict(),
                layers=raw["layers"],
                source_bytes=raw["source_bytes"],
                stored_bytes=raw["stored_bytes"],
                file_bytes=file_bytes(tmp / MODEL_FILE),
                quantized_params=raw["quantized_params"],
                total_params=raw["total_params"],
                threshold_missed=raw["threshold_missed"],
                seconds=seconds,
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                extra={"path": recipe["path"]}
                | ({"component_profiles": profiles} if profiles else {})
                | ({"budget": raw["budget_note"]} if raw["budget_note"] else {})
                | ({"scale_out": raw["scale_out"]} if "scale_out" in raw else {})
                | ({"calibration": recipe["calibration"]} if "calibration" in recipe else {}),
            )
            return _publish(report, tmp, out)
        finally:
            stack.close()
            shutil.rmtree(tmp, ignore_errors=True)

    def validate_quality(
        self, original: str | os.PathLike[str], quantized: str | os.PathLike[str]
    ) -> list[dict[str, Any]]:
        """Per quantized tensor: error of the stored model against the original weights."""
        from arrowquant.checkpoint import load_checkpoint
        from arrowquant.model import open as open_model

        ck = load_checkpoint(str(original))
        model = open_model(quantized)
        rows = []
        for name in model.names():
            info = model.info(name)
            if info["spec"] is None or name not in ck:
                continue
            if hasattr(model, "tensor"):
                err = model.tensor(name).error(ck.numpy(name))
            else:  # GGUF: decoded as a GGUF reader decodes it
                import numpy as np

                ref = np.ascontiguousarray(ck.numpy(name), dtype=np.float32)
                err = _core.error_metrics(ref, model.dequantize(name))
            rows.append({"name": name, "format": info["spec"]["format"]} | err)
        return rows


def _publish(report: QuantizationReport, tmp: Path, out: Path) -> QuantizationReport:
    """Writes the report beside the model in `tmp`, syncs it, and moves `tmp` to `out`."""
    report.write(tmp)
    _fsync_tree(tmp)
    # The previous output moves aside in one rename, so a kill at any moment leaves the final
    # name holding a complete model (old or new) or nothing - never half of one.
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return report


def _fsync_tree(folder: Path) -> None:
    """Every file under `folder` (a Parquet dataset's folder too) and the folders on disk."""
    for f in folder.iterdir():
        if f.is_dir():
            _fsync_tree(f)
            continue
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary folders of runs that were killed (their pid is gone); we hold the lock."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2 :].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on OUT (flock on `.OUT.lock` beside it, released by the kernel if the
    process dies): a second run writing the same output fails at once with a clear error."""
    import fcntl

    lock = out.with_name(f".{out.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ArrowQuantIOError(
                f"{out}: cannot create {lock.name} ({e.strerror})", "IoError"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise ConfigurationError(
                f"{out}: another arrowquant run (pid {holder or '?'}) is writing this output"
            ) from None
        # The lock file may have been removed by the previous holder after we opened it.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
