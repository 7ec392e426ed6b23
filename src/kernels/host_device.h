#pragma once

// FLORA_HOST_DEVICE marks a function that the CPU kernels (host compiler) and
// the CUDA kernels (nvcc) share, so that both compute it from one source.

#if defined(__CUDACC__)
#define FLORA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FLORA_HOST_DEVICE inline
#endif
