// Fuzz target: the GPT-2 example's safetensors reader (SafetensorsReader:
// header length, JSON header, dtypes, shapes, offsets, then every tensor's
// bytes), on arbitrary bytes as the file. Properties:
//   - reading succeeds or throws c10::Error (the reader's documented error);
//   - every tensor read has the header's dtype and shape and the byte count
//     of its offsets;
//   - what was read, written back by save_safetensors, reads back the same
//     (tensors bit for bit, metadata).

#include "archive_tree.h"
#include "fuzz_target.h"
#include "scratch_dir.h"

#include "safetensors.h"

#include <torch/torch.h>

FLORA_FUZZ_TARGET(safetensors) {
  const std::string path =
      flora::fuzz::write_scratch("input.safetensors", std::string(reinterpret_cast<const char*>(data), size));
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::map<std::string, std::string> metadata;
  try {
    flora::gpt2::SafetensorsReader reader(path);
    metadata = reader.metadata();
    for (const auto& info : reader.tensors()) {
      auto t = reader.load(info.name);
      FLORA_FUZZ_CHECK(
          t.scalar_type() == info.dtype && t.sizes() == c10::IntArrayRef(info.shape) &&
              static_cast<int64_t>(t.nbytes()) == info.end - info.begin,
          "a tensor read differs from its header entry");
      tensors.emplace_back(info.name, std::move(t));
    }
  } catch (const c10::Error&) {
    return 0;
  }

  const std::string copy = flora::fuzz::scratch_dir() + "/copy.safetensors";
  try {
    flora::gpt2::save_safetensors(copy, tensors, metadata);
  } catch (const c10::Error&) {
    // The writer refuses some names the reader accepts (the empty name):
    // nothing to compare then.
    return 0;
  }
  flora::gpt2::SafetensorsReader again(copy); // what we wrote must read
  FLORA_FUZZ_CHECK(again.metadata() == metadata, "metadata changed in a round trip");
  FLORA_FUZZ_CHECK(again.tensors().size() == tensors.size(), "a round trip lost tensors");
  for (const auto& [name, t] : tensors) {
    FLORA_FUZZ_CHECK(again.contains(name), "a round trip lost a tensor");
    FLORA_FUZZ_CHECK(flora::fuzz::same_tensor(again.load(name), t), "a tensor changed in a round trip");
  }
  return 0;
}
