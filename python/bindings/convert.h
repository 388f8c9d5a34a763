// Conversions shared by the binding files: dtypes to numpy, QuantSpec to a dict.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <string>

#include "arrowquant/dtype.h"
#include "arrowquant/quantize.h"

namespace arrowquant::py {

// The numpy dtype that holds `d` without conversion; numpy has no bfloat16/float8, so those
// come out as unsigned integers of their width (the Python layer views them with ml_dtypes).
nanobind::dlpack::dtype NumpyStorage(DType d);
// "F32" -> DType, or a ConfigurationError.
DType ParseDType(const std::string& s);
nanobind::dict SpecDict(const QuantSpec& s);
// ErrorMetrics as {"mse", "rel_rmse", "sqnr_db", "cosine", "max_abs", "count"}.
nanobind::dict MetricsDict(const ErrorMetrics& e);

// The inference entry points' packed weight: four byte buffers and the format as numbers
// (arrowquant.torch.ops' fmt), so that a forward pass parses no strings. `what` names the
// caller in the error for a bad scheme or scale storage number.
using Bytes1D = nanobind::ndarray<nanobind::ro, uint8_t, nanobind::ndim<1>, nanobind::c_contig,
                                  nanobind::device::cpu>;
QuantizedView PackedView(const Bytes1D& codes, const Bytes1D& scales, const Bytes1D& zeros,
                         const Bytes1D& super_scales, int bits, int group_size, int scheme,
                         int scale_storage, int scale_bits, uint64_t rows, uint64_t cols,
                         const char* what);

}  // namespace arrowquant::py
