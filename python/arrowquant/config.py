"""DiffusionQuantConfig: what `quantize_diffusion_model` and `arrowquant quantize` do.

Profiles (the seed's edge / local / cloud): 2, 4 and 8-bit weights. The seed's group sizes
256/128/64 are replaced by 32-element groups with coded scales, which measure better at fewer
bits (docs/benchmarks.md), and its "min accuracy" (weight cosine 0.65/0.85/0.95, which INT4
passes whether or not the layer is fine) by a maximum relative RMSE per layer that the recommended
format meets on ordinary weights at that width and outlier-heavy layers do not.

With calibration (by default for models the tool can sample) and `allocate`, a profile is a size
instead (`size_bpw`, bits per weight of the file), each layer's width then chosen by its
measured contribution to the model's one-step error (docs/gptq.md); the threshold is not used.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from arrowquant._core import WEIGHT_BITS
from arrowquant.dtypes import QUANTIZABLE
from arrowquant.errors import ConfigurationError

# The only place profile-dependent defaults live: `DiffusionQuantConfig()` is the local profile,
# and a field a profile names takes the profile's value unless the caller sets it.
DEFAULT_PROFILE = "local"
# size_bpw: what a calibrated, allocated model aims at (bits per weight over every tensor).
PROFILES: dict[str, dict[str, Any]] = {
    "edge": {"bits": 2, "max_rel_rmse": 0.40, "time_groups": 5, "size_bpw": 2.7},
    # Between local and edge: the step from 4 to 2 bits is too large for many models.
    "compact": {"bits": 3, "max_rel_rmse": 0.25, "time_groups": 8, "size_bpw": 3.5},
    "local": {"bits": 4, "max_rel_rmse": 0.12, "time_groups": 10, "size_bpw": 4.5},
    "cloud": {"bits": 8, "max_rel_rmse": 0.02, "time_groups": 20, "size_bpw": 8.5},
}
# The group size of a calibrated (GPTQ) 2-bit profile when none is asked for
# (api._calibrated_format).
GPTQ_2BIT_GROUP_SIZE = 64
# Marks a field whose default comes from the profile (filled in __post_init__).
_FROM_PROFILE: Any = None
ENV_PREFIX = "ARROW_QUANT_"
_OVERRIDE = re.compile(r"^(?P<pattern>.+)=(?P<bits>2|3|4|8|16|keep)$")
_COMPONENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)=(?P<profile>[a-z]+)$")
# A pipeline's VAE when `components` does not name it: its decoder turns every latent into
# pixels, so its error is in every image, and it is a small share of a pipeline's bytes
# (docs/text-to-image.md measures it).
DEFAULT_COMPONENT_PROFILES = {"vae": "cloud"}


_SIZE = re.compile(r"^\s*(?P<n>\d+(\.\d+)?)\s*(?P<unit>[KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of a size as people write it: "2GB" (10^9), "1.5GiB" (2^30), "500MB", "4096"."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 2GB, 500MB, 1.5GiB, or bytes)")
    unit = (m.group("unit") or "B").upper()
    power = "BKMGT".index(unit[0])
    n = int(float(m.group("n")) * (1024 if "I" in unit else 1000) ** power)
    if n < 1:
        raise ValueError(f"{text!r} is less than a byte")
    return n


def _check_profile(name: object) -> None:
    """A YAML file can hold any value here (a list is unhashable, so test the type first)."""
    if not isinstance(name, str) or name not in PROFILES:
        raise ConfigurationError(f"profile: must be one of {', '.join(PROFILES)} (got {name!r})")


@dataclass
class DiffusionQuantConfig:
    profile: str = DEFAULT_PROFILE
    bits: int = _FROM_PROFILE  # the profile's
    group_size: int | None = None  # None: the recommended format of `bits`
    scheme: str | None = None
    method: str | None = None
    scale_dtype: str | None = None
    max_rel_rmse: float = _FROM_PROFILE  # the profile's
    # Calibration: "auto" = "synthetic" for a model the tool can sample (a diffusers UNet2DModel
    # or DiT folder), else none; "" = none (weight-only); "synthetic[:N]", or a .jsonl /
    # .parquet / saved `datasets` path. The rest applies only with calibration.
    calibration: str = "auto"
    calibration_samples: int = 64  # trajectories for plain "synthetic"
    calibration_steps: int = 25  # DDIM steps sampled; each is a calibration timestep
    # Trajectories sampled together: the unit calibration is recorded and merged in (each batch
    # its own random streams), and what --ray spreads over workers.
    calibration_batch: int = 64
    calibration_cache: str = ""  # "" = $ARROW_QUANT_CACHE or ~/.cache/arrowquant/calibration
    # A single file's diffusers configs, tokenizer and scheduler (a pipeline folder of the same
    # model, as diffusers' from_single_file(config=) takes); "" = read off the shapes.
    model_config: str = ""
    seed: int = 0
    time_groups: int = _FROM_PROFILE  # K timestep groups (the profile's), each its own grid
    adaptive_groups: bool = True  # merge adjacent timesteps by measured error (else uniform)
    act_bits: int = 8
    act_clip: str = "mse"  # minmax, percentile (99.99) or mse
    equalize: bool = False  # DiTAS channel equalization (weights W/s, activations X*s)
    equalize_alpha: float = 0.5
    # Per layer, keep equalization only at the strength (none, 0.5, 0.75, equalize_alpha) that
    # gives the lowest quantized output error on calibration inputs; False: alpha everywhere.
    equalize_search: bool = True
    # With calibration: weights by GPTQ on each layer's input second moments (output error,
    # validated on held-out rows) instead of round-to-nearest on the weights alone.
    gptq: bool = True
    gptq_damp: float = 0.01  # added to H's diagonal, relative to its mean
    gptq_act_order: bool = False  # columns by decreasing input energy, static groups
    # Cap on the second moments (GPTQ's H, every layer, fit and held-out) held while sampling:
    # above it, held-out H go to blocks of 256, then the largest H's blocks shrink, then the
    # widest layers are rounded to nearest instead (the report lists GPTQ per layer). 0: 35% of
    # the model's own parameter bytes, at least 0.5 and at most 2 GiB (capture.moments_cap_bytes).
    moments_memory_gb: float = 0.0
    # With GPTQ: each layer's width (2/3/4/8/keep) by its measured contribution to the whole
    # model's one-step error, within size_bpw (or target_bpw), no layer below half of `bits`;
    # the default rules' first/last/time-embedding choices become overridable. False: the
    # profile's width, with the threshold and fallback ladder.
    allocate: bool = True
    size_bpw: float = _FROM_PROFILE  # the profile's
    # Store each calibrated layer's per-channel input min/max/absmax in the file (provenance).
    activation_stats: bool = False
    modality: str = ""  # "" = detect
    overrides: list[str] = field(default_factory=list)  # "REGEX=BITS" (BITS 2/3/4/8/16/keep)
    # Per pipeline component, "NAME=PROFILE" (edge/compact/local/cloud) or "NAME=keep": that
    # component's width, threshold and size budget (e.g. unet=local, vae=cloud). Unnamed
    # components take the job's profile, a VAE "cloud" (DEFAULT_COMPONENT_PROFILES).
    components: list[str] = field(default_factory=list)
    keep_dtype: str = "F16"
    threads: int = 0  # 0 = all cores
    # Scale-out: calibration's batches and the job's tensors as Ray tasks ("" = off; "default":
    # the cluster RAY_ADDRESS names, else a local one started for the job; else a cluster
    # address, "auto" for a `ray start` cluster here). arrowquant.scale_out.
    ray: str = ""
    # How Ray workers get the checkpoint: "storage" (they read it where the driver does: a file
    # system every node mounts) or "object-store" (the driver sends each task its tensors' bytes
    # and gets the part files back through Ray's object store: nodes without shared storage).
    ray_transfer: str = "storage"
    min_elements: int = 1024
    fail_fast: bool = False
    # Caps on the input (0 = no cap): a file beyond one is refused with an error naming the cap.
    max_header_bytes: int = 100_000_000
    max_tensors: int = 10_000_000
    max_tensor_bytes: int = 0
    max_total_bytes: int = 0
    nan_policy: str = "error"  # NaN/Inf in a weight: "error", or "keep-fp16" (keep it unquantized)
    target_bpw: float = 0.0  # > 0: size budget in bits per weight (widths by measured sensitivity)
    # "parquet": model.aq.parquet; "gguf": GGUF file(s) in ggml's block types (docs/interop.md),
    # the tensors at the target width as `gguf_type` ("" = the width's K-quant), names as
    # `gguf_names` expects (weight-only).
    output_format: str = "parquet"
    gguf_type: str = ""
    gguf_names: str = "diffusers"
    # "" = one model file; else the model as a Parquet dataset (a folder model.aq.parquet/ of
    # files model-00001-of-0000N.parquet) of files of at most this size: "2GB", "500MB",
    # "1.5GiB" or bytes (tensors payload before compression; a tensor larger gets a file alone).
    max_file_size: str = ""

    def __post_init__(self) -> None:
        _check_profile(self.profile)
        for name, value in PROFILES[self.profile].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self.validate()

    @classmethod
    def resolve(
        cls,
        profile: str | None = None,
        config: str | os.PathLike[str] | dict[str, Any] | None = None,
        environ: dict[str, str] | os._Environ[str] | None = None,
        **explicit: Any,
    ) -> DiffusionQuantConfig:
        """The configuration from every source, later ones winning field by field:

        built-in defaults < profile < `config` (YAML path/text or dict) < ARROW_QUANT_* in
        `environ` (os.environ when None; pass {} to ignore it) < `explicit` keyword arguments
        (the command line's flags). Keyword arguments that are None count as not given.
        """
        env = cls._env_values(os.environ if environ is None else environ)
        given = {k: v for k, v in explicit.items() if v is not None}
        file_values: dict[str, Any] = {}
        if config is not None:
            file_values = dict(config) if isinstance(config, dict) else cls._yaml_mapping(config)
            cls._check_known(file_values)
        chosen = [given.pop("profile", None), env.pop("profile", None)]
        chosen += [file_values.pop("profile", None), profile]
        name = next((p for p in chosen if p), DEFAULT_PROFILE)
        cls._check_known(given)
        _check_profile(name)  # checked here too: PROFILES[name] is read below
        return cls(profile=name, **(PROFILES[name] | file_values | env | given))

    @classmethod
    def from_profile(cls, profile: str, **changes: Any) -> DiffusionQuantConfig:
        """`resolve(profile, **changes)`: the profile, then ARROW_QUANT_* environment overrides,
        then `changes` (keyword arguments beat the environment)."""
        return cls.resolve(profile=profile, **changes)

    def _check_types(self) -> None:
        """Every field has the type its annotation says (YAML and dicts can hold anything)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            ann = str(f.type)
            if v is None and ann.endswith("| None"):
                continue
            base = ann.split("|")[0].strip()
            ok = {
                "bool": isinstance(v, bool),
                "int": isinstance(v, int) and not isinstance(v, bool),
                "float": isinstance(v, (int, float)) and not isinstance(v, bool),
                "str": isinstance(v, str),
                "list[str]": isinstance(v, list) and all(isinstance(x, str) for x in v),
            }.get(base, True)
            if not ok:
                raise ConfigurationError(f"{f.name}: must be {ann} (got {v!r})")
            if base == "float":
                object.__setattr__(self, f.name, float(v))

    def validate(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ConfigurationError(f"{name}: {why} (got {getattr(self, name)!r})")

        self._check_types()

        if self.profile not in PROFILES:
            bad("profile", f"must be one of {', '.join(PROFILES)}")
        if self.bits not in WEIGHT_BITS:
            bad("bits", f"must be one of {', '.join(map(str, WEIGHT_BITS))}")
        if self.group_size is not None and self.group_size not in (0, 32, 64, 128, 256):
            bad("group_size", "must be 32, 64, 128, 256 or 0 (per channel)")
        if self.scheme is not None and self.scheme not in ("asym", "sym"):
            bad("scheme", "must be 'asym' or 'sym'")
        if self.method is not None and self.method not in ("search", "minmax"):
            bad("method", "must be 'search' or 'minmax'")
        if self.scale_dtype is not None and self.scale_dtype not in (
            "f16",
            "f32",
            "q6",
            "q7",
            "q8",
        ):
            bad("scale_dtype", "must be f16, f32, q6, q7 or q8")
        if not (0 < self.max_rel_rmse < 10):
            bad("max_rel_rmse", "must be in (0, 10)")
        if self.time_groups < 1:
            bad("time_groups", "must be at least 1")
        for cap in ("max_header_bytes", "max_tensors", "max_tensor_bytes", "max_total_bytes"):
            if getattr(self, cap) < 0:
                bad(cap, "must be >= 0 (0 = no cap)")
        if self.nan_policy not in ("error", "keep-fp16"):
            bad("nan_policy", "must be 'error' or 'keep-fp16'")
        if self.act_bits not in (4, 8):
            bad("act_bits", "must be 4 or 8")
        if self.act_clip not in ("minmax", "percentile", "mse"):
            bad("act_clip", "must be minmax, percentile or mse")
        if not (0.0 < self.gptq_damp <= 1.0):
            bad("gptq_damp", "must be in (0, 1]")
        if not (0.0 <= self.equalize_alpha <= 1.0):
            bad("equalize_alpha", "must be in [0, 1]")
        if not (1 <= self.calibration_steps <= 1000):
            bad("calibration_steps", "must be in 1..1000")
        if not (1 <= self.calibration_batch <= 4096):
            bad("calibration_batch", "must be in 1..4096")
        if self.calibration_samples < 1:
            bad("calibration_samples", "must be at least 1")
        if self.model_config and not os.path.isdir(self.model_config):
            bad("model_config", f"{self.model_config}: no such folder")
        if self.modality not in ("", "image", "video", "audio", "text", "code"):
            bad("modality", "must be image, video, audio, text, code or empty (detect)")
        if self.keep_dtype not in QUANTIZABLE:
            bad("keep_dtype", f"must be one of {', '.join(QUANTIZABLE)}")
        if self.target_bpw != 0 and not (1.0 <= self.target_bpw <= 16.0):
            bad("target_bpw", "must be 0 (off) or between 1 and 16")
        if self.moments_memory_gb != 0 and not (0.001 <= self.moments_memory_gb <= 4096):
            bad("moments_memory_gb", "must be 0 (auto) or between 0.001 and 4096")
        if not (1.0 <= self.size_bpw <= 16.0):
            bad("size_bpw", "must be between 1 and 16")
        if self.threads < 0:
            bad("threads", "must be >= 0")
        if self.output_format not in ("parquet", "gguf"):
            bad("output_format", "must be parquet or gguf")
        if self.gguf_type:
            from arrowquant.gguf import check_type

            try:
                check_type(self.gguf_type)
            except ConfigurationError as e:
                bad("gguf_type", str(e).split(": ", 1)[1])
        if self.gguf_names not in ("diffusers", "sdcpp"):
            bad("gguf_names", "must be diffusers or sdcpp")
        if self.ray_transfer not in ("storage", "object-store"):
            bad("ray_transfer", "must be storage or object-store")
        if self.max_file_size:
            try:
                parse_size(self.max_file_size)
            except ValueError as e:
                bad("max_file_size", str(e))
            if self.output_format != "parquet":
                bad("max_file_size", "splits Parquet output only (GGUF: a file per component)")
        seen: set[str] = set()
        for c in self.components:
            m = _COMPONENT.match(c)
            if not m or m.group("profile") not in (*PROFILES, "keep"):
                bad(
                    "components",
                    f"{c!r} is not NAME=PROFILE with PROFILE in {', '.join(PROFILES)} or keep",
                )
            elif m.group("name") in seen:
                bad("components", f"component {m.group('name')!r} is named twice")
            else:
                seen.add(m.group("name"))
        for o in self.overrides:
            m = _OVERRIDE.match(o)
            if not m:
                bad("overrides", f"{o!r} is not REGEX=BITS with BITS in 2, 3, 4, 8, 16, keep")
            try:
                re.compile(m.group("pattern"))  # type: ignore[union-attr]
            except re.error as e:
                bad("overrides", f"{o!r}: {e}")

    def component_profiles(self, present: list[str] | None = None) -> dict[str, str]:
        """Component -> profile name or "keep": the `components` entries, then for every other
        component in `present` (a pipeline's subfolders) its default (DEFAULT_COMPONENT_PROFILES)
        or the job's profile, so that each component meets its own size."""
        out: dict[str, str] = {}
        for c in self.components:
            m = _COMPONENT.match(c)
            assert m  # validate() checked
            out[m.group("name")] = m.group("profile")
        for name in present or []:
            if name not in out:
                out[name] = DEFAULT_COMPONENT_PROFILES.get(name, self.profile)
        return out

    def for_component(self, profile: str) -> DiffusionQuantConfig:
        """These settings with a component's profile: its width, threshold, time groups and
        size in place of the job's."""
        return dataclasses.replace(self, profile=profile, components=[], **PROFILES[profile])

    def limits(self) -> tuple[int, int, int, int]:
        big = 2**64 - 1
        return (
            self.max_header_bytes or big,
            self.max_tensors or big,
            self.max_tensor_bytes or big,
            self.max_total_bytes or big,
        )

    def rules(self) -> list[tuple[str, int, str]]:
        out = []
        for o in self.overrides:
            m = _OVERRIDE.match(o)
            assert m
            b = m.group("bits")
            out.append((m.group("pattern"), 0 if b in ("16", "keep") else int(b), f"override {o}"))
        return out

    def to_core(self, recipe_json: str = "{}") -> Any:
        """The C++ pipeline's configuration (`_core.PipelineConfig`) for these values."""
        import arrowquant._core as _core
        from arrowquant import __version__

        c = _core.PipelineConfig()
        c.bits = self.bits
        c.max_rel_rmse = self.max_rel_rmse
        c.rules = self.rules()
        c.modality = self.modality
        c.keep_dtype = self.keep_dtype
        c.threads = self.threads or (os.cpu_count() or 1)
        c.min_elements = self.min_elements
        c.fail_fast = self.fail_fast
        c.keep_nonfinite = self.nan_policy == "keep-fp16"
        c.target_bpw = self.target_bpw
        c.gptq_damp = self.gptq_damp
        c.gptq_act_order = self.gptq_act_order
        c.recipe_json = recipe_json
        c.tool_version = __version__
        c.max_file_bytes = parse_size(self.max_file_size) if self.max_file_size else 0
        if any(
            v is not None for v in (self.group_size, self.scheme, self.method, self.scale_dtype)
        ):
            rec = _core.recommended_spec(self.bits)
            c.set_spec(
                rec["group_size"] if self.group_size is None else self.group_size,
                self.scheme or rec["scheme"],
                self.method or rec["method"],
                self.scale_dtype or rec["scale_dtype"],
            )
        return c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def recipe(self) -> dict[str, Any]:
        """The fields a model file's recipe records: all but where the job ran (`ray`,
        `ray_transfer`) and how
        its output is cut into files (`max_file_size`), so a job run on a cluster, or written
        as a dataset, stores the same recipe as one run here into one file."""
        out = self.to_dict()
        del out["ray"], out["ray_transfer"], out["max_file_size"]
        return out

    @classmethod
    def _check_known(cls, d: dict[Any, Any]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            # YAML keys need not be strings (`on:` is the boolean True): print them, never sort
            # mixed types (found by the fuzzer, tests/fuzz/fuzz_config.py).
            names = ", ".join(sorted(repr(k) if not isinstance(k, str) else k for k in unknown))
            raise ConfigurationError(f"unknown config fields: {names}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionQuantConfig:
        cls._check_known(d)
        return cls(**d)

    def to_yaml(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str]) -> DiffusionQuantConfig:
        """From a YAML file path or YAML text; unknown or invalid fields are errors."""
        return cls.from_dict(cls._yaml_mapping(source))

    @staticmethod
    def _yaml_mapping(source: str | os.PathLike[str]) -> dict[str, Any]:
        import yaml

        text = str(source)
        if "\n" not in text and os.path.exists(text):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as e:
            # ValueError / OverflowError: e.g. a timestamp or number PyYAML cannot build.
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigurationError(f"config is not valid YAML: {first}") from None
        if not isinstance(data, dict):
            raise ConfigurationError("config YAML must be a mapping of field: value")
        return data

    @classmethod
    def _env_values(cls, environ: Any) -> dict[str, Any]:
        """ARROW_QUANT_<FIELD> values parsed by the field's type; a bad value is an error."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f"{ENV_PREFIX}{f.name.upper()}"
            if key not in environ:
                continue
            raw = environ[key]
            base = str(f.type).split("|")[0].strip()
            try:
                if base == "bool":
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    out[f.name] = raw.lower() in ("1", "true", "yes")
                elif base == "int":
                    out[f.name] = int(raw)
                elif base == "float":
                    out[f.name] = float(raw)
                elif base == "list[str]":
                    out[f.name] = [s for s in raw.split(",") if s]
                elif base == "str" and "None" in str(f.type) and raw == "":
                    out[f.name] = None
                else:
                    out[f.name] = raw
            except ValueError:
                raise ConfigurationError(f"{key}={raw!r} is not a valid {f.name}") from None
        return out

    def with_env(self, environ: dict[str, str] | None = None) -> DiffusionQuantConfig:
        """These values with ARROW_QUANT_<FIELD> overrides on top (the environment wins here;
        `resolve` is the full precedence order, in which explicit arguments beat it)."""
        env = self._env_values(os.environ if environ is None else environ)
        return dataclasses.replace(self, **env)
