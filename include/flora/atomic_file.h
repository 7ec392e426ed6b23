#pragma once

// Files written atomically, for checkpoints: the bytes go to a temporary
// file beside the target, which is flushed to disk and then renamed over it,
// so a crash mid-write never leaves a truncated file where a good one was.

#include <flora/export.h>

#include <torch/serialize.h>

#include <cstddef>
#include <string>

namespace flora {

/// A file written atomically: bytes go to a temporary file beside the target
/// (path.tmp-XXXXXX); commit() fsyncs it, renames it over the target and
/// fsyncs the directory. Destroyed without commit(), the temporary file is
/// removed and the target untouched. Errors throw c10::Error naming the path.
class FLORA_API AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void write(const std::string& data) {
    write(data.data(), data.size());
  }
  void commit();

 private:
  std::string path_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

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
