"""ArrowQuantV2: the seed's Python API over the C++ pipeline."""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arrowquant._core as _core
from arrowquant.config import DiffusionQuantConfig
from arrowquant.errors import ArrowQuantIOError, ConfigurationError
from arrowquant.report import QuantizationReport

MODEL_FILE = "model.aq.parquet"
ProgressCallback = Callable[[int, int, str], Any]


class ArrowQuantV2:
    """Quantizes diffusion models: `quantize_diffusion_model(model, out_folder)`."""

    def quantize_diffusion_model(
        self,
        model_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        config: DiffusionQuantConfig | None = None,
        progress_callback: ProgressCallback | None = None,
        overwrite: bool = False,
    ) -> QuantizationReport:
        """Writes `output_path/` with model.aq.parquet, report.json and report.md.

        The folder appears complete or not at all: everything is written to a temporary folder
        beside it and renamed at the end. progress_callback(done_bytes, total_bytes, tensor) runs
        on this thread; returning False or raising cancels the run (the exception propagates).
        """
        from arrowquant import __version__

        cfg = config or DiffusionQuantConfig.from_profile("local")
        out = Path(output_path)
        if out.exists() and not overwrite:
            raise ConfigurationError(f"{out}: already exists (pass overwrite=True / --overwrite)")
        if not out.parent.exists():
            raise ArrowQuantIOError(f"{out.parent}: no such folder", "IoError")
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
        except OSError as e:
            raise ArrowQuantIOError(
                f"{out}: cannot create the output ({e.strerror})", "IoError"
            ) from None
        spec = None
        if any(v is not None for v in (cfg.group_size, cfg.scheme, cfg.method, cfg.scale_dtype)):
            rec = _core.recommended_spec(cfg.bits)
            sd = cfg.scale_dtype or rec["scale_dtype"]
            spec = (
                rec["group_size"] if cfg.group_size is None else cfg.group_size,
                cfg.scheme or rec["scheme"],
                cfg.method or rec["method"],
                sd,
                int(sd[1]) if sd.startswith("q") else 6,
            )
        recipe = {"config": cfg.to_dict(), "tool": f"arrowquant {__version__}"}
        t0 = time.perf_counter()
        try:
            raw = _core.run_pipeline(
                str(model_path),
                str(tmp / MODEL_FILE),
                cfg.bits,
                spec,
                cfg.max_rel_rmse,
                cfg.rules(),
                cfg.modality,
                cfg.keep_dtype,
                cfg.threads or (os.cpu_count() or 1),
                cfg.min_elements,
                cfg.fail_fast,
                json.dumps(recipe),
                __version__,
                cfg.target_bpw,
                progress_callback,
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
                file_bytes=(tmp / MODEL_FILE).stat().st_size,
                quantized_params=raw["quantized_params"],
                total_params=raw["total_params"],
                threshold_missed=raw["threshold_missed"],
                seconds=seconds,
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                extra={"budget": raw["budget_note"]} if raw["budget_note"] else {},
            )
            report.write(tmp)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
            return report
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def validate_quality(
        self, original: str | os.PathLike[str], quantized: str | os.PathLike[str]
    ) -> list[dict[str, Any]]:
        """Per quantized tensor: error of the stored model against the original weights."""
        from arrowquant.checkpoint import load_checkpoint
        from arrowquant.model import open as open_model

        ck = load_checkpoint(str(original))
        path = Path(quantized)
        model = open_model(path / MODEL_FILE if path.is_dir() else path)
        rows = []
        for name in model.names():
            info = model.info(name)
            if info["spec"] is None or name not in ck:
                continue
            err = model.tensor(name).error(ck.numpy(name))
            rows.append({"name": name, "format": info["spec"]["format"]} | err)
        return rows
