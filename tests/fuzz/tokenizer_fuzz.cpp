// Fuzz target: the GPT-2 example's tokenizer. The first byte picks a mode:
//   even: the shipped tiny GPT-2's vocab.json and merges.txt, and the rest of
//         the input as text: encode() succeeds or throws c10::Error (invalid
//         UTF-8, named by offset), and decode(encode(text)) == text (GPT-2's
//         byte-level BPE loses nothing when every byte has a token);
//   odd:  the rest of the input is vocab.json, merges.txt,
//         tokenizer_config.json and a text, separated by the line "--8<--":
//         Tokenizer::from_files succeeds or throws c10::Error, and then
//         encode and decode succeed or throw c10::Error.

#include "fuzz_target.h"
#include "scratch_dir.h"

#include "tokenizer.h"

#include <c10/util/Exception.h>

#include <string>
#include <vector>

namespace {

const flora::gpt2::Tokenizer& shipped() {
  static const auto tokenizer = flora::gpt2::Tokenizer::from_dir(std::string(FLORA_GPT2_SOURCE_DIR) + "/assets/tiny-gpt2");
  return tokenizer;
}

// Whether every byte's symbol is a token (then encoding is lossless).
bool every_byte_has_a_token(const flora::gpt2::Tokenizer& t) {
  for (int b = 0; b < 256; ++b) {
    if (t.token_to_id(flora::gpt2::Tokenizer::byte_symbol(static_cast<uint8_t>(b))) < 0) {
      return false;
    }
  }
  return true;
}

std::vector<std::string> split(const std::string& text, const std::string& separator, size_t parts) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (out.size() + 1 < parts) {
    const size_t at = text.find(separator, pos);
    if (at == std::string::npos) {
      break;
    }
    out.push_back(text.substr(pos, at - pos));
    pos = at + separator.size();
  }
  out.push_back(text.substr(std::min(pos, text.size())));
  out.resize(parts);
  return out;
}

} // namespace

FLORA_FUZZ_TARGET(tokenizer) {
  if (size == 0) {
    return 0;
  }
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1) == 0) {
    static const bool lossless = every_byte_has_a_token(shipped());
    std::vector<int64_t> ids;
    try {
      ids = shipped().encode(rest);
    } catch (const c10::Error&) {
      return 0; // invalid UTF-8
    }
    const std::string back = shipped().decode(ids);
    FLORA_FUZZ_CHECK(!lossless || back == rest, "decode(encode(text)) != text");
    return 0;
  }
  const auto parts = split(rest, "\n--8<--\n", 4);
  const auto vocab = flora::fuzz::write_scratch("vocab.json", parts[0]);
  const auto merges = flora::fuzz::write_scratch("merges.txt", parts[1]);
  const auto config = flora::fuzz::write_scratch("tokenizer_config.json", parts[2]);
  try {
    const auto t = flora::gpt2::Tokenizer::from_files(vocab, merges, config);
    const auto ids = t.encode(parts[3]);
    t.decode(ids);
    t.vocab_json();
    t.merges_txt();
  } catch (const c10::Error&) {
  }
  return 0;
}
