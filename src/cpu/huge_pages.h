#pragma once

#include <torch/types.h>

namespace flora::cpu {

// Asks the kernel to back a large CPU buffer with transparent huge pages.
//
// The step's scratch buffers (the update u, the projections, the
// compressed products) are new memory on every step: glibc hands blocks
// above its mmap threshold back to the kernel when they are freed, so every
// 4 KiB page of them faults on first touch. For GPT-2 small that is about
// 190 MB, some 47,000 faults a step (30 ms of 40 to fill the 113 MB update
// buffer the first time, against 11 ms for memory already mapped). With
// 2 MiB pages the same fill takes 15 ms. Systems whose THP mode is
// `madvise` (the default of several distributions) only do this when
// asked; under `always` it is already so and under `never` the advice is
// ignored. A hint only: nothing fails when it is not taken, and buffers
// that are not on the CPU or span no whole huge page are left alone.
void advise_huge_pages(const torch::Tensor& buffer);

} // namespace flora::cpu
