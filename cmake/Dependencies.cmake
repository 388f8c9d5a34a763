# Third-party dependencies. Debian -dev packages (installed by `make deps`) provide
# nlohmann-json, GoogleTest, RapidCheck, Google Benchmark and Highway; Arrow C++ and Parquet come
# from the pyarrow wheel, so the Python package and the C++ core share one Arrow in one process.

find_package(nlohmann_json 3.10 REQUIRED)
find_package(hwy REQUIRED)
find_package(Threads REQUIRED)

if(NOT AQ_PYTHON_EXECUTABLE)
  if(DEFINED Python_EXECUTABLE)
    set(AQ_PYTHON_EXECUTABLE ${Python_EXECUTABLE})
  else()
    find_program(AQ_PYTHON_EXECUTABLE NAMES python3 python REQUIRED)
  endif()
endif()

execute_process(
  COMMAND ${AQ_PYTHON_EXECUTABLE} -c
    "import pyarrow as pa; print(pa.get_include()); print(pa.get_library_dirs()[0]); print(pa.__version__)"
  OUTPUT_VARIABLE _aq_pa_out RESULT_VARIABLE _aq_pa_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _aq_pa_rc EQUAL 0)
  message(FATAL_ERROR "pyarrow is needed for Arrow C++ (tried ${AQ_PYTHON_EXECUTABLE}); run `make deps`")
endif()
string(REPLACE "\n" ";" _aq_pa_out "${_aq_pa_out}")
list(GET _aq_pa_out 0 AQ_ARROW_INCLUDE_DIR)
list(GET _aq_pa_out 1 AQ_ARROW_LIB_DIR)
list(GET _aq_pa_out 2 AQ_PYARROW_VERSION)

# The wheel ships versioned sonames only (libarrow.so.2600); link them by full path.
function(aq_import_pyarrow_lib target stem)
  file(GLOB _cands "${AQ_ARROW_LIB_DIR}/lib${stem}.so.[0-9]*")
  list(FILTER _cands EXCLUDE REGEX "\\.so\\.[0-9]+\\.[0-9]")
  list(LENGTH _cands _n)
  if(NOT _n EQUAL 1)
    message(FATAL_ERROR "expected one lib${stem}.so.N in ${AQ_ARROW_LIB_DIR}, found: ${_cands}")
  endif()
  add_library(${target} SHARED IMPORTED GLOBAL)
  set_target_properties(${target} PROPERTIES
    IMPORTED_LOCATION "${_cands}"
    INTERFACE_INCLUDE_DIRECTORIES "${AQ_ARROW_INCLUDE_DIR}")
endfunction()
aq_import_pyarrow_lib(aq::arrow arrow)
aq_import_pyarrow_lib(aq::parquet parquet)
message(STATUS "Arrow C++ from pyarrow ${AQ_PYARROW_VERSION}: ${AQ_ARROW_LIB_DIR}")

if(AQ_BUILD_TESTS)
  find_package(GTest REQUIRED)
  find_package(rapidcheck REQUIRED)
endif()
if(AQ_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
