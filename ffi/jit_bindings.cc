// Python bindings of the JIT layer (module jax_dgpt._C): kernels dir, compile, driver probe.
#include <Python.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "jit/compiler.h"
#include "jit/driver.h"
#include "jit/kernel_cache.h"
#include "jit_bindings.h"
#include "xla/ffi/api/c_api.h"

namespace nb = nanobind;

namespace dgpt {

nb::dict cubin_entry_dict(const jit::CubinEntry& entry) {
  nb::dict result;
  result["key"] = entry.key;
  result["origin"] = jit::origin_name(entry.origin);
  result["cubin_size"] = entry.cubin.size();
  result["log"] = compiler_log_str(entry.log);
  result["path"] = entry.path;
  return result;
}

// A Python str from compiler output. NOTES: compiler logs may hold bytes that are not UTF-8
// (file names, locale messages); they become U+FFFD instead of failing the whole call.
nb::object compiler_log_str(const std::string& text) {
  PyObject* str = PyUnicode_DecodeUTF8(text.data(), Py_ssize_t(text.size()), "replace");
  if (!str) throw nb::python_error();
  return nb::steal(str);
}

namespace {

nb::dict compile_source(const std::string& name, const std::string& source, bool ptxas_verbose) {
  jit::CubinEntry entry;
  Status status;
  {
    nb::gil_scoped_release release;  // compiles take seconds; let other Python threads run
    status = jit::get_or_compile(name, source, ptxas_verbose, &entry);
  }
  if (!status.ok()) throw std::runtime_error(status.message());
  return cubin_entry_dict(entry);
}

std::string compiler_signature() {
  const jit::Compiler* compiler = nullptr;
  Status status = jit::select_compiler(&compiler);
  if (!status.ok()) throw std::runtime_error(status.message());
  return compiler->signature();
}

std::pair<bool, std::string> driver_available() {
  Status status;
  bool ok = driver::get(&status) != nullptr;
  return {ok, ok ? std::string() : status.message()};
}

}  // namespace

void bind_jit(nb::module_& m) {
  m.def("set_kernels_dir", &jit::set_kernels_dir, nb::arg("path"),
        "Directory of the CUDA headers the JIT compiles against (part of every cache key).");
  m.def("kernels_dir", &jit::kernels_dir, "The directory set by set_kernels_dir ('' if unset).");
  m.def("compile_source", &compile_source, nb::arg("name"), nb::arg("source"),
        nb::arg("ptxas_verbose") = false,
        "Compiles (or fetches from the cache) an sm_90a cubin for a CUDA source. Returns a dict "
        "with key, origin ('compiled', 'memory' or 'disk'), cubin_size, log and path. Raises "
        "RuntimeError with the compiler command and log on failure.");
  m.def("compiler_signature", &compiler_signature,
        "Name, version and flags of the compiler the environment selects.");
  m.def("driver_available", &driver_available,
        "(True, '') when libcuda loads and cuInit succeeds, else (False, reason).");
  m.def(
      "ffi_api_version",
      []() { return std::make_pair(int(XLA_FFI_API_MAJOR), int(XLA_FFI_API_MINOR)); },
      "XLA FFI API version (major, minor) of the headers this extension was built with.");
}

}  // namespace dgpt
