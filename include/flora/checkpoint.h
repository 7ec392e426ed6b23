#pragma once

// Atomic checkpoint files: written to a temporary file beside the target,
// flushed to disk, then renamed over it, so a crash mid-write never leaves a
// truncated checkpoint where a good one was.

#include <flora/export.h>

#include <torch/serialize.h>

#include <string>

namespace flora {

/// Writes `archive` to `path` atomically. Throws c10::Error naming the path
/// on any I/O failure (the previous file, if any, is then untouched).
FLORA_API void save_atomic(torch::serialize::OutputArchive& archive, const std::string& path);

/// torch::save(value, path), atomically. Works for modules, optimizers and
/// tensors, like torch::save.
template <typename Value>
void save_atomic(const Value& value, const std::string& path) {
  torch::serialize::OutputArchive archive;
  archive << value;
  save_atomic(archive, path);
}

} // namespace flora
