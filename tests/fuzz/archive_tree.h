#pragma once

// A torch::serialize archive (what torch::save writes and torch::load reads)
// as a tree of named entries, and a structure-aware mutator over it: the
// checkpoint fuzz targets read a real checkpoint into a tree, let the fuzz
// input edit the tree (drop, copy, rename and retype entries; other
// integers, floats, strings; tensors of other dtypes, shapes, layouts and
// values), write it back with torch's own writer and load the bytes.
//
// Why not mutate the bytes: what a loader sees after torch's zip reader and
// unpickler are the archive's entries; the bytes in between are LibTorch's
// format, which LibTorch parses (tests/fuzz/README.md). Every archive made here is one a user
// could write with OutputArchive's public API, so every finding is ours.

#include "byte_reader.h"

#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <string>
#include <utility>
#include <vector>

namespace flora::fuzz {

struct ArchiveNode {
  /// How an entry was written: OutputArchive::write(key, IValue),
  /// write(key, tensor) (a parameter), write(key, tensor, /*is_buffer=*/true),
  /// or write(key, OutputArchive) (a nested archive, `children`).
  enum class Kind { value, parameter, buffer, archive };
  Kind kind = Kind::archive;
  c10::IValue value;
  std::vector<std::pair<std::string, ArchiveNode>> children;
};

/// Reads every entry of an archive, recursively.
ArchiveNode read_archive(torch::serialize::InputArchive& archive);
ArchiveNode read_archive_file(const std::string& path);
/// Writes the tree with torch's writer (throws c10::Error where the writer
/// refuses an entry, e.g. two entries with one name).
void write_archive(const ArchiveNode& node, torch::serialize::OutputArchive& archive);
std::string archive_bytes(const ArchiveNode& root);

/// Applies up to `max_edits` edits chosen by `in` (fewer if it runs out).
/// Tensors made by the edits are small (at most a few thousand elements).
void mutate_archive(ArchiveNode& root, ByteReader& in, int max_edits);

/// A text that two trees share exactly when they hold the same entries
/// with the same values (in any order; tensors by dtype, shape and bytes):
/// saved archives are compared through it, since their bytes also hold a
/// serialization id that differs from save to save.
std::string canonical(const ArchiveNode& node);
std::string canonical_bytes(const std::string& archive_bytes);

/// Bitwise equality of tensors (NaN equals the same NaN): dtype, shape and
/// element bytes; an undefined tensor equals only an undefined one.
bool same_tensor(const torch::Tensor& a, const torch::Tensor& b);

} // namespace flora::fuzz
