// safetensors reading, writing and the errors for malformed files.

#include "gpt2_test_util.h"

#include "file_io.h"
#include "safetensors.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>

namespace flora::gpt2 {
namespace {

using testing::expect_error;

// A file from a JSON header and a data buffer.
std::string make_file(const std::string& header, const std::string& data, int64_t declared_length = -1) {
  std::string bytes(8, '\0');
  const uint64_t n = declared_length >= 0 ? static_cast<uint64_t>(declared_length) : header.size();
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  }
  return bytes + header + data;
}

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  // An empty tensor may have no storage at all: memcmp must not see its null pointer.
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && a.nbytes() == b.nbytes() &&
      (a.nbytes() == 0 || std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0);
}

TEST(Gpt2Safetensors, ReadsTheLogitsFixture) {
  SafetensorsReader reader(testing::fixture("logits.safetensors"));
  EXPECT_EQ(reader.metadata().at("format"), "pt");
  ASSERT_EQ(reader.tensors().size(), 5u);
  EXPECT_EQ(reader.info("input_ids").dtype, torch::kLong);
  EXPECT_EQ(reader.info("input_ids").shape, (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(reader.info("logits").dtype_name, "F32");
  EXPECT_EQ(reader.info("logits").shape, (std::vector<int64_t>{2, 16, 512}));
  EXPECT_EQ(reader.info("loss").shape, (std::vector<int64_t>{1}));
  const auto ids = reader.load("input_ids");
  EXPECT_EQ(ids.index({1, 0}).item<int64_t>(), 511); // the first id of row 1 is <|endoftext|>
  EXPECT_EQ(ids.index({1, 1}).item<int64_t>(), 0);
  const auto all = load_safetensors(testing::fixture("logits.safetensors"));
  EXPECT_EQ(all.size(), 5u);
  EXPECT_TRUE(torch::equal(all.at("input_ids"), ids));
  EXPECT_TRUE(all.at("logits").abs().max().item<float>() > 0);
  expect_error([&] { reader.load("nope"); }, "has no tensor 'nope'");
}

TEST(Gpt2Safetensors, RoundTripIsBitExactForEveryDtype) {
  testing::TempDir dir;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(42);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto dtype : {torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    auto t = torch::randn({3, 5}, gen).to(dtype);
    // Special values survive too.
    t.index_put_({0, 0}, std::numeric_limits<double>::infinity());
    t.index_put_({0, 1}, -0.0);
    t.index_put_({0, 2}, std::numeric_limits<double>::quiet_NaN());
    tensors.emplace_back(std::string("float_") + c10::toString(dtype), t);
  }
  for (const auto dtype : {torch::kInt64, torch::kInt32, torch::kInt16, torch::kInt8, torch::kUInt8}) {
    tensors.emplace_back(std::string("int_") + c10::toString(dtype), torch::randint(-100, 100, {7}, gen).to(dtype));
  }
  tensors.emplace_back("big_i64", torch::tensor({INT64_MIN, INT64_MAX, int64_t{0}}, torch::kLong));
  tensors.emplace_back("bool", torch::tensor({true, false, true}));
  tensors.emplace_back("scalar", torch::tensor(3.5f));
  tensors.emplace_back("empty", torch::zeros({0, 4}));
  tensors.emplace_back("non_contiguous", torch::arange(12, torch::kFloat).view({3, 4}).t());
  const std::string path = dir.file("all.safetensors");
  save_safetensors(path, tensors, {{"format", "pt"}, {"note", "round trip"}});

  // The header is what Hugging Face writes: 8-byte aligned, metadata first.
  const std::string bytes = read_file(path);
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_EQ(bytes.compare(8, 38, "{\"__metadata__\":{\"format\":\"pt\",\"note\":"), 0) << bytes.substr(8, 60);

  std::map<std::string, std::string> metadata;
  const auto loaded = load_safetensors(path, &metadata);
  EXPECT_EQ(metadata.at("format"), "pt");
  EXPECT_EQ(metadata.at("note"), "round trip");
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    EXPECT_TRUE(same_bytes(loaded.at(name), t.contiguous())) << name;
  }
  // Overwriting works and leaves no temporary file behind.
  save_safetensors(path, std::map<std::string, torch::Tensor>{{"x", torch::ones({2})}});
  EXPECT_EQ(load_safetensors(path).size(), 1u);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"all.safetensors"});
}

TEST(Gpt2Safetensors, WriterRejectsBadInput) {
  testing::TempDir dir;
  const std::vector<std::pair<std::string, torch::Tensor>> duplicate = {{"a", torch::ones({1})}, {"a", torch::ones({1})}};
  expect_error([&] { save_safetensors(dir.file("x"), duplicate); }, "duplicate tensor name 'a'");
  const std::vector<std::pair<std::string, torch::Tensor>> reserved = {{"__metadata__", torch::ones({1})}};
  expect_error([&] { save_safetensors(dir.file("x"), reserved); }, "bad tensor name");
  const std::vector<std::pair<std::string, torch::Tensor>> complex = {{"c", torch::ones({1}, torch::kComplexFloat)}};
  expect_error([&] { save_safetensors(dir.file("x"), complex); }, "cannot be stored in safetensors");
  EXPECT_TRUE(dir.entries().empty());
}

struct BadFile {
  const char* what;
  std::string bytes;
  const char* message;
};

TEST(Gpt2Safetensors, MalformedFilesGiveClearErrors) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight(8, '\0');
  const std::vector<BadFile> cases = {
      {"empty file", "", "truncated: 0 bytes, fewer than the 8-byte header length"},
      {"5 bytes", std::string(5, '\x01'), "truncated: 5 bytes"},
      {"header length past the end", make_file("{" + ok_entry + "}", eight, 4096), "bad header length 4096"},
      {"absurd header length", make_file("{}", "", int64_t{1} << 40), "bad header length"},
      {"malformed JSON", make_file("{\"a\": [1, 2", ""), "malformed JSON header"},
      {"not an object", make_file("[1, 2]  ", ""), "the header is not a JSON object"},
      {"entry not an object", make_file(R"({"a": 3})", ""), "tensor 'a' is not a JSON object"},
      {"no data_offsets", make_file(R"({"a":{"dtype":"F32","shape":[2]}})", eight), "tensor 'a' has no 'data_offsets'"},
      {"unknown dtype", make_file(R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "ab"),
       "tensor 'a' has unknown dtype 'F8_E4M3'"},
      {"shape/byte-size mismatch", make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
       "shape/byte-size mismatch"},
      {"negative shape", make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       "shape entry must be a non-negative integer"},
      {"offsets reversed", make_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight),
       "end before begin"},
      {"offsets out of range (truncated data)", make_file("{" + ok_entry + "}", "1234"), "out of range"},
      {"overlapping tensors",
       make_file("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, '\0')),
       "overlap the previous tensor's data"},
      {"gap between tensors",
       make_file("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", std::string(16, '\0')),
       "non-contiguous data: a gap of 4 bytes before tensor 'b'"},
      {"trailing bytes", make_file("{" + ok_entry + "}", std::string(12, '\0')),
       "non-contiguous data: the tensors cover 8 bytes of a 12-byte data buffer"},
      {"metadata not strings", make_file(R"({"__metadata__":{"format":1}})", ""), "__metadata__ value of 'format'"},
  };
  testing::TempDir dir;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string path = dir.file("bad.safetensors");
    write_file_atomic(path, c.bytes);
    expect_error([&] { SafetensorsReader reader(path); }, c.message);
    expect_error([&] { SafetensorsReader reader(path); }, path); // the message names the file
  }
  expect_error([&] { SafetensorsReader reader(dir.file("missing.safetensors")); }, "cannot open safetensors file");
}

} // namespace
} // namespace flora::gpt2
