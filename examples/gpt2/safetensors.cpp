#include "safetensors.h"

#include "file_io.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace flora::gpt2 {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O here assumes a little-endian host");

// The reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeName {
  const char* name;
  torch::Dtype dtype;
};
constexpr DtypeName kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

int64_t checked_int(const nlohmann::json& value, const std::string& path, const std::string& what) {
  TORCH_CHECK(
      value.is_number_integer() && (value.is_number_unsigned() || value.get<int64_t>() >= 0),
      "safetensors file '", path, "': ", what, " must be a non-negative integer, got ", value.dump());
  TORCH_CHECK(
      !value.is_number_unsigned() || value.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX), "safetensors file '",
      path, "': ", what, " is too large: ", value.dump());
  return value.get<int64_t>();
}

void pread_all(int fd, void* out, int64_t size, int64_t offset, const std::string& path) {
  char* p = static_cast<char*>(out);
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, static_cast<size_t>(size), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    TORCH_CHECK(n >= 0, "reading safetensors file '", path, "' failed: ", std::strerror(errno));
    TORCH_CHECK(n > 0, "safetensors file '", path, "' is truncated (unexpected end of file at byte ", offset, ")");
    p += n;
    size -= n;
    offset += n;
  }
}

} // namespace

torch::Dtype safetensors_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      return d.dtype;
    }
  }
  TORCH_CHECK(false, "unknown safetensors dtype '", name, "'");
}

std::string safetensors_dtype_name(torch::Dtype dtype) {
  for (const auto& d : kDtypes) {
    if (dtype == d.dtype) {
      return d.name;
    }
  }
  TORCH_CHECK(false, "dtype ", dtype, " cannot be stored in safetensors here");
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(fd_ >= 0, "cannot open safetensors file '", path, "': ", std::strerror(errno));
  try {
    struct stat st {};
    TORCH_CHECK(::fstat(fd_, &st) == 0, "cannot stat '", path, "': ", std::strerror(errno));
    const auto file_bytes = static_cast<uint64_t>(st.st_size);
    TORCH_CHECK(
        file_bytes >= 8, "safetensors file '", path, "' is truncated: ", file_bytes,
        " bytes, fewer than the 8-byte header length");
    unsigned char prefix[8];
    pread_all(fd_, prefix, 8, 0, path);
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; --i) {
      header_bytes = (header_bytes << 8) | prefix[i];
    }
    TORCH_CHECK(
        header_bytes <= kMaxHeaderBytes, "safetensors file '", path, "': bad header length ", header_bytes,
        " (limit ", kMaxHeaderBytes, ")");
    TORCH_CHECK(
        header_bytes <= file_bytes - 8, "safetensors file '", path, "': bad header length ", header_bytes,
        ": the file has only ", file_bytes - 8, " bytes after the length (truncated?)");
    TORCH_CHECK(header_bytes >= 2, "safetensors file '", path, "': bad header length ", header_bytes);
    std::string header(header_bytes, '\0');
    pread_all(fd_, header.data(), static_cast<int64_t>(header_bytes), 8, path);
    data_start_ = static_cast<int64_t>(8 + header_bytes);
    const int64_t data_bytes = static_cast<int64_t>(file_bytes) - data_start_;

    nlohmann::json json;
    try {
      json = nlohmann::json::parse(header);
    } catch (const nlohmann::json::exception& e) {
      TORCH_CHECK(false, "safetensors file '", path, "': malformed JSON header: ", e.what());
    }
    TORCH_CHECK(json.is_object(), "safetensors file '", path, "': the header is not a JSON object");

    for (const auto& [name, entry] : json.items()) {
      if (name == "__metadata__") {
        TORCH_CHECK(entry.is_object(), "safetensors file '", path, "': __metadata__ must be an object");
        for (const auto& [key, value] : entry.items()) {
          TORCH_CHECK(
              value.is_string(), "safetensors file '", path, "': __metadata__ value of '", key,
              "' must be a string, got ", value.dump());
          metadata_[key] = value.get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor '" + name + "'";
      TORCH_CHECK(entry.is_object(), "safetensors file '", path, "': ", where, " is not a JSON object");
      for (const char* key : {"dtype", "shape", "data_offsets"}) {
        TORCH_CHECK(entry.contains(key), "safetensors file '", path, "': ", where, " has no '", key, "'");
      }
      SafetensorInfo info;
      info.name = name;
      TORCH_CHECK(entry["dtype"].is_string(), "safetensors file '", path, "': ", where, ": dtype must be a string");
      info.dtype_name = entry["dtype"].get<std::string>();
      bool known = false;
      for (const auto& d : kDtypes) {
        if (info.dtype_name == d.name) {
          info.dtype = d.dtype;
          known = true;
        }
      }
      TORCH_CHECK(known, "safetensors file '", path, "': ", where, " has unknown dtype '", info.dtype_name, "'");
      TORCH_CHECK(entry["shape"].is_array(), "safetensors file '", path, "': ", where, ": shape must be an array");
      int64_t numel = 1;
      for (const auto& d : entry["shape"]) {
        const int64_t size = checked_int(d, path, where + " shape entry");
        info.shape.push_back(size);
        TORCH_CHECK(
            !__builtin_mul_overflow(numel, size, &numel), "safetensors file '", path, "': ", where,
            ": shape too large");
      }
      const auto& offsets = entry["data_offsets"];
      TORCH_CHECK(
          offsets.is_array() && offsets.size() == 2, "safetensors file '", path, "': ", where,
          ": data_offsets must be [begin, end]");
      info.begin = checked_int(offsets[0], path, where + " data_offsets[0]");
      info.end = checked_int(offsets[1], path, where + " data_offsets[1]");
      TORCH_CHECK(
          info.begin <= info.end, "safetensors file '", path, "': ", where, ": data_offsets [", info.begin, ", ",
          info.end, "] end before begin");
      int64_t nbytes = 0;
      const int64_t item = static_cast<int64_t>(c10::elementSize(info.dtype));
      TORCH_CHECK(
          !__builtin_mul_overflow(numel, item, &nbytes) && nbytes == info.end - info.begin, "safetensors file '",
          path, "': ", where, ": shape/byte-size mismatch: shape ", c10::IntArrayRef(info.shape), " of ",
          info.dtype_name, " needs ", numel, " x ", item, " bytes, data_offsets [", info.begin, ", ", info.end,
          "] hold ", info.end - info.begin);
      TORCH_CHECK(
          info.end <= data_bytes, "safetensors file '", path, "': ", where, ": data_offsets [", info.begin, ", ",
          info.end, "] out of range: the data buffer has ", data_bytes, " bytes (truncated file?)");
      tensors_.push_back(std::move(info));
    }
    std::stable_sort(tensors_.begin(), tensors_.end(), [](const SafetensorInfo& a, const SafetensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    int64_t expected = 0;
    for (const auto& t : tensors_) {
      TORCH_CHECK(
          t.begin >= expected, "safetensors file '", path, "': tensor '", t.name, "' data_offsets [", t.begin, ", ",
          t.end, "] overlap the previous tensor's data (which ends at ", expected, ")");
      TORCH_CHECK(
          t.begin == expected, "safetensors file '", path, "': non-contiguous data: a gap of ", t.begin - expected,
          " bytes before tensor '", t.name, "' (data_offsets [", t.begin, ", ", t.end, "])");
      expected = t.end;
    }
    TORCH_CHECK(
        expected == data_bytes, "safetensors file '", path, "': non-contiguous data: the tensors cover ", expected,
        " bytes of a ", data_bytes, "-byte data buffer");
    for (size_t i = 0; i < tensors_.size(); ++i) {
      index_[tensors_[i].name] = i;
    }
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

bool SafetensorsReader::contains(const std::string& name) const {
  return index_.count(name) != 0;
}

const SafetensorInfo& SafetensorsReader::info(const std::string& name) const {
  const auto it = index_.find(name);
  TORCH_CHECK(it != index_.end(), "safetensors file '", path_, "' has no tensor '", name, "'");
  return tensors_[it->second];
}

torch::Tensor SafetensorsReader::load(const std::string& name) const {
  const auto& i = info(name);
  auto tensor = torch::empty(i.shape, torch::TensorOptions().dtype(i.dtype));
  if (i.end > i.begin) {
    pread_all(fd_, tensor.data_ptr(), i.end - i.begin, data_start_ + i.begin, path_);
  }
  return tensor;
}

std::map<std::string, torch::Tensor> SafetensorsReader::load_all() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& t : tensors_) {
    out[t.name] = load(t.name);
  }
  return out;
}

std::map<std::string, torch::Tensor> load_safetensors(
    const std::string& path,
    std::map<std::string, std::string>* metadata) {
  SafetensorsReader reader(path);
  if (metadata != nullptr) {
    *metadata = reader.metadata();
  }
  return reader.load_all();
}

void save_safetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) {
      meta[key] = value;
    }
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string> seen;
  std::vector<torch::Tensor> data;
  int64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(!name.empty() && name != "__metadata__", "save_safetensors '", path, "': bad tensor name '", name, "'");
    TORCH_CHECK(seen.insert(name).second, "save_safetensors '", path, "': duplicate tensor name '", name, "'");
    TORCH_CHECK(tensor.defined(), "save_safetensors '", path, "': tensor '", name, "' is undefined");
    const int64_t nbytes = tensor.numel() * static_cast<int64_t>(tensor.element_size());
    nlohmann::ordered_json entry;
    entry["dtype"] = safetensors_dtype_name(tensor.scalar_type());
    entry["shape"] = tensor.sizes().vec();
    entry["data_offsets"] = {offset, offset + nbytes};
    header[name] = std::move(entry);
    offset += nbytes;
    data.push_back(tensor);
  }
  std::string json = header.dump();
  json.append((8 - (json.size() % 8)) % 8, ' ');
  unsigned char prefix[8];
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) {
    prefix[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xFF);
  }
  AtomicFile file(path);
  file.write(prefix, 8);
  file.write(json);
  for (const auto& t : data) {
    // One tensor at a time on the host, so a GPU model is not copied whole.
    const auto cpu = t.detach().to(torch::kCPU).contiguous();
    if (cpu.nbytes() > 0) {
      file.write(cpu.data_ptr(), cpu.nbytes());
    }
  }
  file.commit();
}

void save_safetensors(
    const std::string& path,
    const std::map<std::string, torch::Tensor>& tensors,
    const std::map<std::string, std::string>& metadata) {
  save_safetensors(path, std::vector<std::pair<std::string, torch::Tensor>>(tensors.begin(), tensors.end()), metadata);
}

} // namespace flora::gpt2
