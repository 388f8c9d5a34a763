"""ArrowQuant C++ core"""

from collections.abc import Mapping, Sequence
from typing import Annotated

import numpy
from numpy.typing import NDArray


VERSION: str = '0.1.0'

WEIGHT_BITS: list = [2, 3, 4, 8]

def f16_bits_to_f32(bits: Annotated[NDArray[numpy.uint16], dict(order='C', device='cpu', writable=False)]) -> NDArray[numpy.float32]:
    """
    uint16 bit patterns of IEEE half floats -> float32 (exact, NaN payloads kept).
    """

def f32_to_f16_bits(values: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)]) -> NDArray[numpy.uint16]:
    """float32 -> uint16 half-float bit patterns, round to nearest even."""

def bf16_bits_to_f32(bits: Annotated[NDArray[numpy.uint16], dict(order='C', device='cpu', writable=False)]) -> NDArray[numpy.float32]: ...

def f32_to_bf16_bits(values: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)]) -> NDArray[numpy.uint16]: ...

DTYPES: list = ...

class Checkpoint:
    @staticmethod
    def open(path: str, max_header_bytes: int = 100000000, max_tensors: int = 10000000, max_tensor_bytes: int = 18446744073709551615, max_total_bytes: int = 18446744073709551615) -> Checkpoint: ...

    @property
    def path(self) -> str: ...

    @property
    def layout(self) -> str: ...

    @property
    def model_index_json(self) -> str: ...

    @property
    def total_tensor_bytes(self) -> int: ...

    def components(self) -> list: ...

    @property
    def naming(self) -> dict:
        """
        How a lone model names its tensors: layout (diffusers, ldm, ldm-sdxl, flux, sd3), why, and its components by prefix
        """

    def tensors(self) -> list: ...

    def info(self, arg: str, /) -> dict: ...

    def __contains__(self, arg: str, /) -> bool: ...

    def __len__(self) -> int: ...

    def array(self, name: str) -> object:
        """Zero-copy read-only view (bf16/f8 as raw unsigned integers)."""

    def raw(self, name: str) -> object:
        """The tensor's bytes as a zero-copy read-only uint8 view."""

    def write_tensor_table(self, path: str) -> None: ...

class QuantizedTensor:
    @property
    def codes(self) -> Annotated[NDArray[numpy.uint8], dict(writable=False)]: ...

    @property
    def scales(self) -> Annotated[NDArray[numpy.uint8], dict(writable=False)]: ...

    @property
    def zeros(self) -> Annotated[NDArray[numpy.uint8], dict(writable=False)]: ...

    @property
    def super_scales(self) -> Annotated[NDArray[numpy.uint8], dict(writable=False)]: ...

    @property
    def shape(self) -> list[int]: ...

    @property
    def rows(self) -> int: ...

    @property
    def cols(self) -> int: ...

    @property
    def groups_per_row(self) -> int: ...

    @property
    def source_dtype(self) -> str: ...

    @property
    def spec(self) -> dict: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def bits_per_weight(self) -> float: ...

    def dequantize(self, dtype: str = 'F32', threads: int = 1) -> NDArray: ...

    def measure_error(self, reference: Annotated[NDArray, dict(order='C', device='cpu', writable=False)], dtype: str, threads: int = 1) -> dict: ...

def error_metrics(reference: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)], values: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)]) -> dict:
    """
    Error of `values` against `reference` (float32 arrays of equal size): the metrics quantization reports.
    """

def quantize(array: Annotated[NDArray, dict(order='C', device='cpu', writable=False)], dtype: str, name: str, bits: int, group_size: int, scheme: str, method: str, scale_dtype: str, threads: int = 1) -> QuantizedTensor: ...

def dequantize_rows(codes: Annotated[NDArray[numpy.uint8], dict(shape=(None,), order='C', device='cpu', writable=False)], scales: Annotated[NDArray[numpy.uint8], dict(shape=(None,), order='C', device='cpu', writable=False)], zeros: Annotated[NDArray[numpy.uint8], dict(shape=(None,), order='C', device='cpu', writable=False)], super_scales: Annotated[NDArray[numpy.uint8], dict(shape=(None,), order='C', device='cpu', writable=False)], bits: int, group_size: int, scheme: int, scale_storage: int, scale_bits: int, rows: int, cols: int, begin: int, end: int, out: Annotated[NDArray, dict(order='C', device='cpu')], threads: int = 1) -> None: ...

def recommended_spec(arg: int, /) -> dict: ...

MODEL_FILE_NAME: str = 'model.aq.parquet'

def resolve_model_path(path: str) -> str:
    """
    The model file of a path: the file itself, or model.aq.parquet in the folder that `arrowquant quantize` wrote.
    """

class ModelWriter:
    @staticmethod
    def open(path: str, tool_version: str, recipe_json: str, source_json: str, modality: str, is_diffusion_model: bool, extra: Mapping[str, str], max_chunk_bytes: int = 1073741824) -> ModelWriter: ...

    def write_quantized(self, name: str, component: str, tensor: QuantizedTensor, metrics: Mapping[str, float] | None = None) -> None: ...

    def write_raw(self, name: str, component: str, array: Annotated[NDArray, dict(order='C', device='cpu', writable=False)], dtype: str) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

class ModelReader:
    @staticmethod
    def open(path: str, verify_checksums: bool = True) -> ModelReader: ...

    @property
    def path(self) -> str: ...

    @property
    def files(self) -> list[str]:
        """The files read: the model file, or a dataset's files in order."""

    @property
    def legacy(self) -> bool: ...

    @property
    def metadata(self) -> dict[str, str]: ...

    def tensors(self) -> list: ...

    def read_quantized(self, arg: str, /) -> QuantizedTensor: ...

    def read_raw(self, arg: str, /) -> object: ...

    def load(self, names: Sequence[str], dtype: str, threads: int = 1, as_stored: bool = False) -> list: ...

    def load_into(self, names: Sequence[str], outputs: Sequence[Annotated[NDArray, dict(order='C', device='cpu')]], dtype: str, threads: int = 1, as_stored: bool = False) -> None: ...

class PipelineConfig:
    """
    The C++ pipeline's configuration (arrowquant.DiffusionQuantConfig.to_core() builds it).
    """

    def __init__(self) -> None: ...

    @property
    def bits(self) -> int: ...

    @bits.setter
    def bits(self, arg: int, /) -> None: ...

    @property
    def max_rel_rmse(self) -> float: ...

    @max_rel_rmse.setter
    def max_rel_rmse(self, arg: float, /) -> None: ...

    @property
    def modality(self) -> str: ...

    @modality.setter
    def modality(self, arg: str, /) -> None: ...

    @property
    def threads(self) -> int: ...

    @threads.setter
    def threads(self, arg: int, /) -> None: ...

    @property
    def min_elements(self) -> int: ...

    @min_elements.setter
    def min_elements(self, arg: int, /) -> None: ...

    @property
    def fail_fast(self) -> bool: ...

    @fail_fast.setter
    def fail_fast(self, arg: bool, /) -> None: ...

    @property
    def keep_nonfinite(self) -> bool: ...

    @keep_nonfinite.setter
    def keep_nonfinite(self, arg: bool, /) -> None: ...

    @property
    def target_bpw(self) -> float: ...

    @target_bpw.setter
    def target_bpw(self, arg: float, /) -> None: ...

    @property
    def allocate(self) -> bool: ...

    @allocate.setter
    def allocate(self, arg: bool, /) -> None: ...

    @property
    def recipe_json(self) -> str: ...

    @recipe_json.setter
    def recipe_json(self, arg: str, /) -> None: ...

    @property
    def tool_version(self) -> str: ...

    @tool_version.setter
    def tool_version(self, arg: str, /) -> None: ...

    @property
    def max_file_bytes(self) -> int:
        """> 0: a Parquet dataset of files of at most this many payload bytes"""

    @max_file_bytes.setter
    def max_file_bytes(self, arg: int, /) -> None: ...

    @property
    def keep_dtype(self) -> str: ...

    @keep_dtype.setter
    def keep_dtype(self, arg: str, /) -> None: ...

    @property
    def rules(self) -> list[tuple[str, int, str]]:
        """
        (regex, bits, why): bits 2/3/4/8, 0 = keep; first match wins, before the defaults
        """

    @rules.setter
    def rules(self, arg: Sequence[tuple[str, int, str]], /) -> None: ...

    def set_spec(self, group_size: int, scheme: str, method: str, scale_dtype: str) -> None: ...

    def spec_for(self, bits: int) -> dict:
        """The format a layer gets at `bits` (what the pipeline quantizes with)."""

    def set_component(self, name: str, own: PipelineConfig) -> None:
        """
        Component `name` (a pipeline folder's subfolder) takes `own`'s width, format, threshold and size budget instead of this config's.
        """

    def keep_component(self, name: str) -> None:
        """Component `name` stays unquantized (NAME=keep)."""

    @property
    def components(self) -> list[str]:
        """Names of the components with their own settings."""

    @property
    def gptq_damp(self) -> float: ...

    @gptq_damp.setter
    def gptq_damp(self, arg: float, /) -> None: ...

    @property
    def gptq_act_order(self) -> bool: ...

    @gptq_act_order.setter
    def gptq_act_order(self, arg: bool, /) -> None: ...

    def set_moments(self, moments: Mapping[str, tuple[SecondMoments, SecondMoments]]) -> None:
        """
        {weight name: (fit, check)}: GPTQ on `fit`, output-error validation on `check` (held-out rows; None: weight error)
        """

    def set_sensitivity(self, sensitivity: Mapping[str, Sequence[float]]) -> None:
        """
        {weight name: one value per output row}: the layers' measured contribution weights to the one-step error (LayerMoments::sensitivity); call after set_moments
        """

    def set_activations(self, plans: dict) -> None: ...

    def set_budget(self, widths: Mapping[str, tuple[int, float]], note: str) -> None:
        """
        The job's size budgets as assign_budgets returned them: a part uses them as they are.
        """

    @property
    def part(self) -> tuple[int, int]:
        """
        (begin, end): the tensors this run quantizes and writes, in checkpoint order
        """

    @part.setter
    def part(self, arg: tuple[int, int], /) -> None: ...

def run_pipeline(model_path: str, out_path: str, config: PipelineConfig, progress: object | None, limits: tuple[int, int, int, int] = ...) -> dict: ...

def assign_budgets(model_path: str, config: PipelineConfig) -> tuple[dict[str, tuple[int, float]], str]:
    """
    ({tensor: (bits, output error)}, note): the job's size budgets, computed once for a job run in parts (PipelineConfig.set_budget).
    """

class PartMerger:
    """
    A job's model file written from its parts' files, appended in tensor order as they are ready (C++ PartMerger); nothing is left unless close() succeeds.
    """

    @staticmethod
    def open(model_path: str, out_path: str, config: PipelineConfig, modality: str) -> PartMerger: ...

    def append(self, part: str) -> None: ...

    def close(self) -> None: ...

def merge_parts(model_path: str, parts: Sequence[str], out_path: str, config: PipelineConfig, modality: str) -> None:
    """
    Writes out_path from a job's part files (in tensor order), as one run would have.
    """

def write_dataset_file(model_path: str, parts: Sequence[str], first: int, count: int, out_path: str, config: PipelineConfig, modality: str, index: int) -> None:
    """
    File `index` of a job's dataset: the parts' tensors [first, first + count).
    """

def dataset_file_starts(payload_bytes: Sequence[int], max_file_bytes: int) -> list[int]:
    """
    Each dataset file's first tensor, for tensors of these payload bytes (stored_bytes).
    """

def dataset_pending_name(index: int) -> str: ...

def finish_dataset(folder: str, path: str, count: int) -> None:
    """Names the dataset's written files and moves `folder` to `path`."""

def plan(model_path: str, config: PipelineConfig) -> list[tuple[str, int, float, str]]: ...

def detect_modality(model_path: str) -> tuple[str, str]: ...

def default_rules(modality: str, model_path: str = '') -> list[tuple[str, int, str]]:
    """
    The default selection rules for a modality, by the role table of the checkpoint's naming layout (diffusers' without a path).
    """

def tensor_roles(names: Sequence[str]) -> tuple:
    """
    (layout, why, [(name, component, role)]) of a list of tensor names: the naming layout they are in, each one's component and role (the table the selection rules use).
    """

class ActivationCollector:
    @staticmethod
    def make(channels: int) -> ActivationCollector: ...

    @property
    def channels(self) -> int: ...

    def add(self, timestep: int, values: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)], outer: int, channels: int, inner: int, threads: int = 1) -> None: ...

    def merge(self, timestep: int, count: int, min: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], max: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], absmax: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], histogram: Annotated[NDArray[numpy.uint64], dict(shape=(None,), order='C', device='cpu', writable=False)]) -> None: ...

    def stats(self) -> list: ...

    def overall(self) -> dict: ...

def fit_time_groups(collector: ActivationCollector, groups: int, adaptive: bool, act_bits: int, clip: str = 'mse', percentile: float = 99.99, num_train_timesteps: int = 1000) -> dict: ...

def expected_act_error(histogram: Annotated[NDArray[numpy.uint64], dict(shape=(None,), order='C', device='cpu', writable=False)], scale: float, zero_point: int, bits: int) -> float: ...

def equalization_scales(weight_absmax: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], act_absmax: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], alpha: float = 0.5) -> NDArray[numpy.float32]: ...

def input_channel_absmax(weight: Annotated[NDArray, dict(order='C', device='cpu', writable=False)], dtype: str, name: str = 'weight') -> NDArray[numpy.float32]: ...

def scale_input_channels(weight: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)], scales: Annotated[NDArray[numpy.float32], dict(shape=(None,), order='C', device='cpu', writable=False)], divide: bool = True, name: str = 'weight') -> NDArray[numpy.float32]:
    """
    A copy of an f32 weight [out, in, ...] as W / s (divide, how equalized weights are stored) or W * s along the input-channel axis; every kernel position of channel i shares s_i.
    """

class SecondMoments:
    """
    H = sum x x^T of a layer's inputs (block-diagonal, f64, upper triangles packed row by row): GPTQ's input
    """

    @staticmethod
    def make(dim: int, block: int = 0) -> SecondMoments: ...

    def add(self, rows: Annotated[NDArray[numpy.float32], dict(shape=(None, None), order='C', device='cpu', writable=False)], threads: int = 1) -> None:
        """Adds rows [n, dim] (float32)."""

    def merge(self, arg: SecondMoments, /) -> None: ...

    @property
    def dim(self) -> int: ...

    @property
    def block(self) -> int: ...

    @property
    def count(self) -> int: ...

    def data(self) -> NDArray[numpy.float64]: ...

    def diagonal(self) -> NDArray[numpy.float64]:
        """
        H's diagonal: each input's energy (what GGUF calls an importance matrix)
        """

    def restore(self, data: Annotated[NDArray[numpy.float64], dict(shape=(None,), order='C', device='cpu', writable=False)], count: int) -> None: ...

HISTOGRAM: dict = ...

HISTOGRAM_BIN_VALUES: numpy.ndarray = ...

class Int8Weight:
    @property
    def rows(self) -> int: ...

    @property
    def cols(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

def int8_weight(codes: Annotated[NDArray[numpy.uint8], dict(shape=(None,), order='C', device='cpu', writable=False)], scales: Annotated[NDArray[numpy.uint8], dict(shape=(None,), order='C', device='cpu', writable=False)], zeros: Annotated[NDArray[numpy.uint8], dict(shape=(None,), order='C', device='cpu', writable=False)], super_scales: Annotated[NDArray[numpy.uint8], dict(shape=(None,), order='C', device='cpu', writable=False)], bits: int, group_size: int, scheme: int, scale_storage: int, scale_bits: int, rows: int, cols: int, threads: int = 1) -> Int8Weight: ...

def int8_linear(x: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)], weight: Int8Weight, scale: float, zero: float, bias: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)] | None, out: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu')], threads: int = 1) -> None: ...

def int8_conv2d(x: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)], weight: Int8Weight, scale: float, zero: float, bias: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu', writable=False)] | None, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, out: Annotated[NDArray[numpy.float32], dict(order='C', device='cpu')], threads: int = 1) -> None: ...

def int8_kernel() -> str: ...

def gguf_types() -> list[tuple[str, int, int, int, float]]: ...

def gguf_fits(type: str, ne0: int) -> bool: ...

def gguf_encode(array: Annotated[NDArray, dict(order='C', device='cpu', writable=False)], dtype: str, name: str, type: str, method: str = 'search', threads: int = 1, moments: SecondMoments | None = None, damp: float = 0.01) -> tuple:
    """
    w's blocks in type t and ggml's decoding's error; with `moments` (the layer's input second moments over a row), codes chosen by GPTQ for the output error.
    """

def gguf_decode(type: str, bytes: Annotated[NDArray[numpy.uint8], dict(shape=(None,), order='C', device='cpu', writable=False)], shape: Sequence[int], threads: int = 1) -> NDArray[numpy.float32]: ...

class GgufFile:
    @staticmethod
    def open(path: str) -> GgufFile: ...

    @property
    def path(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def alignment(self) -> int: ...

    @property
    def metadata(self) -> list[tuple[str, int, str]]: ...

    @property
    def tensors(self) -> list: ...

    def raw(self, name: str) -> Annotated[NDArray[numpy.uint8], dict(writable=False)]: ...

    def decode(self, name: str, threads: int = 1) -> NDArray[numpy.float32]: ...

def export_gguf(model_path: str, out_path: str, tensors: Sequence[tuple[str, str, str, Sequence[int]]], kv: Sequence[tuple[str, int, str]], method: str = 'search', threads: int = 1, progress: object | None = None, moments: Mapping[str, tuple[SecondMoments, SecondMoments]] = {}, damp: float = 0.01) -> list:
    """
    The checkpoint's tensors (source, name, type, stored shape) encoded into one GGUF file; tensors named in `moments` ({source: (fit, check or None)}) by GPTQ.
    """

def export_model_gguf(model_path: str, out_path: str, kv: Sequence[tuple[str, int, str]]) -> list: ...
