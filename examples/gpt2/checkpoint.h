#pragma once

// Activation checkpointing: run a function of one tensor without keeping
// its intermediate activations for backward, and recompute them when the
// gradient is needed.
//
// checkpoint(fn, x, params) returns fn(x), computed under no-grad. Autograd
// sees one node whose inputs are x and `params` (the tensors fn reads that
// need gradients, e.g. a transformer block's parameters); it saves only x.
// In backward it runs fn(x) again with grad enabled on a detached copy of x
// and returns the gradients of x and of each parameter, which autograd then
// accumulates as usual (so gradient accumulation over micro-batches works).
//
// fn must be deterministic: the recomputation must give the same values. The
// GPT-2 blocks here are (no dropout). A function that draws random numbers
// (dropout) would have to stash and restore the generator state around the
// recomputation; this helper does not, and says so here rather than silently
// producing different masks.

#include <torch/types.h>

#include <functional>
#include <vector>

namespace flora::gpt2 {

torch::Tensor checkpoint(
    std::function<torch::Tensor(const torch::Tensor&)> fn,
    const torch::Tensor& x,
    const std::vector<torch::Tensor>& params);

} // namespace flora::gpt2
