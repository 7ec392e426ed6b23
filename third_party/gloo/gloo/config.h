/**
 * Written by hand for flora (not generated from gloo/config.h.in): the
 * configuration that the Gloo compiled into PyTorch 2.11.0's Linux CUDA
 * wheel (libtorch_cpu.so / libtorch_cuda.so) was built with, as read off the
 * library's symbols: the TCP transport only (no TLS, libuv or ibverbs
 * symbols), CUDA support with torch's dtypes (gloo::CudaReductionFunction is
 * instantiated for c10::Half and c10::BFloat16), no NCCL, RCCL, ROCm, Redis
 * or MPI inside Gloo. Version: Gloo's CMakeLists.txt at the vendored commit.
 *
 * flora includes these headers in one translation unit only
 * (src/distributed/gloo_backend.cpp), to construct c10d::ProcessGroupGloo,
 * whose code is in libtorch; nothing of Gloo is compiled into flora.
 */

#pragma once

#define GLOO_VERSION_MAJOR 0
#define GLOO_VERSION_MINOR 5
#define GLOO_VERSION_PATCH 0

#define GLOO_VERSION (GLOO_VERSION_MAJOR * 10000 + GLOO_VERSION_MINOR * 100 + GLOO_VERSION_PATCH)

#define GLOO_USE_CUDA 1
#define GLOO_USE_NCCL 0
#define GLOO_USE_ROCM 0
#define GLOO_USE_RCCL 0
#define GLOO_USE_REDIS 0
#define GLOO_USE_IBVERBS 0
#define GLOO_USE_MPI 0
#define GLOO_USE_AVX 0
#define GLOO_USE_LIBUV 0

#define GLOO_HAVE_TRANSPORT_TCP 1
#define GLOO_HAVE_TRANSPORT_TCP_TLS 0
#define GLOO_HAVE_TRANSPORT_IBVERBS 0
#define GLOO_HAVE_TRANSPORT_UV 0

#define GLOO_USE_TORCH_DTYPES 1
