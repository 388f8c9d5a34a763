// arrowquant._core: the C++ core as seen from Python. Thin: argument conversion, GIL release,
// Status -> exception. Everything else lives in the library.
#include <nanobind/nanobind.h>

#include "bindings.h"
#include "status_error.h"

#include <iterator>
#include <vector>

#include <nanobind/stl/vector.h>

#include "arrowquant/quantize.h"

NB_MODULE(_core, m) {
  m.doc() = "ArrowQuant C++ core";
  m.attr("__version__") = AQ_VERSION;
  m.attr("VERSION") = AQ_VERSION;  // typed in the generated stub (dunders are not)
  m.attr("WEIGHT_BITS") =
      std::vector<int>(std::begin(arrowquant::kWeightBits), std::end(arrowquant::kWeightBits));
  arrowquant::py::RegisterStatusTranslator(m);
  arrowquant::py::BindDtypes(m);
  arrowquant::py::BindCheckpoint(m);
  arrowquant::py::BindQuantize(m);
  arrowquant::py::BindModelFile(m);
  arrowquant::py::BindPipeline(m);
  arrowquant::py::BindCalibration(m);
  arrowquant::py::BindInference(m);
  arrowquant::py::BindGguf(m);
}
