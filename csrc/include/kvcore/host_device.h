// Portability macros so numerics headers compile both as host C++ and CUDA.
#pragma once
#if defined(__CUDACC__)
#define KV_HD __host__ __device__ __forceinline__
#else
#define KV_HD inline
#endif
