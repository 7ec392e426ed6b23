#include "pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <c10/util/Exception.h>

#include <memory>
#include <string>

namespace flora::gpt2 {

const char* const kGpt2PreTokenizerPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(code, buffer, sizeof(buffer));
  return n < 0 ? "PCRE2 error " + std::to_string(code) : std::string(reinterpret_cast<const char*>(buffer), n);
}

bool is_utf8_error(int code) {
  return code <= PCRE2_ERROR_UTF8_ERR1 && code >= PCRE2_ERROR_UTF8_ERR21;
}

// Compiled once per process; matching with it is thread-safe (each call has
// its own match data).
class CompiledPattern {
 public:
  CompiledPattern() {
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    code_ = pcre2_compile(
        reinterpret_cast<PCRE2_SPTR>(kGpt2PreTokenizerPattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &error,
        &error_offset, nullptr);
    TORCH_CHECK(
        code_ != nullptr, "PCRE2 cannot compile GPT-2's pattern at offset ", error_offset, ": ", pcre2_message(error),
        " (is PCRE2 built with Unicode support?)");
    // Without a JIT (some platforms, or PCRE2 built without it) the
    // interpreter runs the same pattern, only slower.
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~CompiledPattern() {
    pcre2_code_free(code_);
  }
  CompiledPattern(const CompiledPattern&) = delete;
  CompiledPattern& operator=(const CompiledPattern&) = delete;

  const pcre2_code* code() const {
    return code_;
  }
  bool jit() const {
    return jit_;
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

const CompiledPattern& pattern() {
  static const CompiledPattern compiled;
  return compiled;
}

struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const {
    pcre2_match_data_free(data);
  }
};

} // namespace

bool pre_tokenizer_uses_jit() {
  return pattern().jit();
}

std::vector<std::string_view> pre_tokenize_views(std::string_view text) {
  const auto& compiled = pattern();
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> match(
      pcre2_match_data_create_from_pattern(compiled.code(), nullptr));
  TORCH_CHECK(match != nullptr, "PCRE2: out of memory");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::vector<std::string_view> pieces;
  size_t offset = 0;
  // PCRE2 validates the whole subject's UTF-8 on the first call; the later
  // calls skip that check, which would otherwise make the loop quadratic.
  uint32_t options = 0;
  while (offset < text.size()) {
    const int rc = pcre2_match(compiled.code(), subject, text.size(), offset, options, match.get(), nullptr);
    TORCH_CHECK(
        !is_utf8_error(rc), "tokenizer: invalid UTF-8 at byte offset ", pcre2_get_startchar(match.get()), ": ",
        pcre2_message(rc));
    TORCH_CHECK(rc > 0, "tokenizer: PCRE2 failed at byte offset ", offset, ": ", pcre2_message(rc));
    options = PCRE2_NO_UTF_CHECK;
    const PCRE2_SIZE* range = pcre2_get_ovector_pointer(match.get());
    // Every character matches some alternative, and none matches the empty
    // string: the pieces tile the text (a gap would lose text silently).
    TORCH_CHECK(
        range[0] == offset && range[1] > offset, "tokenizer: GPT-2's pattern left a gap at byte offset ", offset);
    pieces.push_back(text.substr(range[0], range[1] - range[0]));
    offset = range[1];
  }
  return pieces;
}

} // namespace flora::gpt2
