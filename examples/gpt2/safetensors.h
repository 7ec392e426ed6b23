#pragma once

// Reading and writing the safetensors format (https://github.com/huggingface/safetensors):
//
//   8 bytes   N, the header length, unsigned 64-bit little-endian
//   N bytes   a JSON object: {"__metadata__": {str: str, ...},            (optional)
//                             "<name>": {"dtype": "F32", "shape": [2, 3],
//                                        "data_offsets": [begin, end]}, ...}
//   rest      the byte buffer: each tensor's raw little-endian row-major data
//             at [begin, end) relative to the buffer's start; the tensors
//             cover the buffer exactly, without gaps or overlaps.
//
// Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.
// Every malformed file gives a c10::Error that names the file and what is
// wrong (truncated file, bad header length, malformed JSON, unknown dtype,
// shape/byte-size mismatch, offsets out of range, overlapping or
// non-contiguous data). Little-endian hosts only (as safetensors itself).

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace flora::gpt2 {

/// One tensor's entry in a safetensors header.
struct SafetensorInfo {
  std::string name;
  std::string dtype_name; // as in the file, e.g. "BF16"
  torch::Dtype dtype;
  std::vector<int64_t> shape;
  int64_t begin = 0; // byte offsets in the data buffer
  int64_t end = 0;
};

/// The torch dtype of a safetensors dtype name; throws for unknown names.
torch::Dtype safetensors_dtype(const std::string& name);
/// The safetensors name of a torch dtype; throws for unsupported dtypes.
std::string safetensors_dtype_name(torch::Dtype dtype);

/// An open safetensors file: the header is parsed and validated on
/// construction; tensors are read on demand with pread (so loading a large
/// model does not hold the whole file in memory twice).
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const {
    return path_;
  }
  /// Entries in data-buffer order.
  const std::vector<SafetensorInfo>& tensors() const {
    return tensors_;
  }
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  bool contains(const std::string& name) const;
  const SafetensorInfo& info(const std::string& name) const;
  /// A new, contiguous CPU tensor with the stored dtype and bytes.
  torch::Tensor load(const std::string& name) const;
  /// Every tensor, by name.
  std::map<std::string, torch::Tensor> load_all() const;

 private:
  std::string path_;
  int fd_ = -1;
  int64_t data_start_ = 0;
  std::vector<SafetensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// All tensors of a file (and its __metadata__ if `metadata` is given).
std::map<std::string, torch::Tensor> load_safetensors(
    const std::string& path,
    std::map<std::string, std::string>* metadata = nullptr);

/// Writes `tensors` (in the given order; names unique and not
/// "__metadata__") atomically: temporary file, fsync, rename. Tensors may be
/// on any device and non-contiguous; their bytes are written as they are
/// (no dtype conversion). The header starts with
/// {"__metadata__": metadata} (Hugging Face wants {"format": "pt"}) and is
/// padded with spaces to a multiple of 8 bytes, as the reference writer does.
void save_safetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

/// The same for a name-sorted map.
void save_safetensors(
    const std::string& path,
    const std::map<std::string, torch::Tensor>& tensors,
    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

} // namespace flora::gpt2
