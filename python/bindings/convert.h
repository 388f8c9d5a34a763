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

}  // namespace arrowquant::py
