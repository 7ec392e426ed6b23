#pragma once

// Small POSIX file helpers for the GPT-2 example.
//
// Deliberately not <filesystem>: the LibTorch wheels export their own
// statically linked std::filesystem symbols (pytorch/pytorch#133437) and a
// program linked against them can crash inside std::filesystem calls.
// Every function throws c10::Error naming the path on failure.

#include <flora/atomic_file.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace flora::gpt2 {

/// The whole file as bytes.
std::string read_file(const std::string& path);

/// Writes `data` to `path` atomically: a temporary file beside it
/// (path.tmp-XXXXXX), fsync, rename over `path`, fsync of the directory. A
/// crash never leaves a truncated file at `path`.
void write_file_atomic(const std::string& path, const std::string& data);

/// (A file written piece by piece: flora::AtomicFile.)

/// Copies a file (atomically at the destination).
void copy_file(const std::string& from, const std::string& to);

/// mkdir -p.
void make_dirs(const std::string& path);

bool is_file(const std::string& path);
bool is_dir(const std::string& path);

/// Size of a file in bytes.
int64_t file_size(const std::string& path);

/// a + "/" + b (no doubled slash; b absolute -> b).
std::string join_path(const std::string& a, const std::string& b);

} // namespace flora::gpt2
