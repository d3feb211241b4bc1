// The Python extension module kvcore._C. Importing it loads the operator
// registrations (TORCH_LIBRARY blocks) of this shared library.
#include <pybind11/pybind11.h>
#include <string>

#ifndef KVCORE_VERSION
#define KVCORE_VERSION "0.0.0"
#endif
#ifndef KVCORE_CUDA_ARCHS
#define KVCORE_CUDA_ARCHS ""
#endif
#ifndef KVCORE_TORCH_VERSION
#define KVCORE_TORCH_VERSION ""
#endif
#ifndef KVCORE_CUDA_VERSION
#define KVCORE_CUDA_VERSION ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "kvcore native operators (registered under torch.ops.kvcore)";
  m.def("build_info", []() {
    py::dict d;
    d["version"] = KVCORE_VERSION;
    d["cpu"] = true;
#ifdef KVCORE_WITH_CUDA
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
    d["cuda_archs"] = std::string(KVCORE_CUDA_ARCHS);
    d["cuda_version"] = std::string(KVCORE_CUDA_VERSION);
    d["torch_version"] = std::string(KVCORE_TORCH_VERSION);
#if defined(__clang__)
    d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    d["compiler"] = std::string("gcc ") + __VERSION__;
#else
    d["compiler"] = std::string("unknown");
#endif
    return d;
  });
}
