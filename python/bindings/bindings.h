#pragma once

#include <nanobind/nanobind.h>

namespace arrowquant::py {

void BindDtypes(nanobind::module_& m);
void BindCheckpoint(nanobind::module_& m);
void BindQuantize(nanobind::module_& m);
void BindModelFile(nanobind::module_& m);
void BindPipeline(nanobind::module_& m);
void BindCalibration(nanobind::module_& m);
void BindInference(nanobind::module_& m);
void BindGguf(nanobind::module_& m);

}  // namespace arrowquant::py
