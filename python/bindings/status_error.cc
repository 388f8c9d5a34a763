#include "status_error.h"

#include <nanobind/stl/string.h>

namespace nb = nanobind;

namespace arrowquant::py {

void RegisterStatusTranslator(nb::module_& m) {
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const StatusError& e) {
      // arrowquant.errors owns the exception hierarchy; it maps a code name to a class.
      nb::object errors = nb::module_::import_("arrowquant.errors");
      nb::object exc = errors.attr("from_status")(std::string(StatusCodeName(e.status().code())),
                                                  e.status().message());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });
  (void)m;
}

}  // namespace arrowquant::py
