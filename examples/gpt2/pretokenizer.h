#pragma once

// GPT-2's pre-tokenisation: the text is cut into the matches of GPT-2's own
// regular expression (OpenAI's encoder.py, Hugging Face's GPT2Tokenizer),
//
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// run by PCRE2 in UTF and UCP mode (JIT-compiled when this PCRE2 has a JIT),
// exactly as written: alternation order, backtracking and the look-ahead
// are PCRE2's, which here agree with the `regex` module that GPT2Tokenizer
// uses. The Unicode classes are PCRE2's own tables, of its Unicode version
// (14.0 for Debian 12's PCRE2 10.42); two known differences from the
// `regex` module follow from that:
//   - characters assigned after PCRE2's Unicode version are neither letters
//     nor numbers here (e.g. the CJK extensions of Unicode 15-17);
//   - PCRE2's \s includes U+180E MONGOLIAN VOWEL SEPARATOR, which is no
//     longer white space since Unicode 6.3 (`regex` follows White_Space).
//
// Invalid UTF-8 is rejected, not guessed at: GPT2Tokenizer works on Python
// strings, so there is no reference behaviour for bytes that are not text.
// The error names the byte offset and PCRE2's reason.

#include <string_view>
#include <vector>

namespace flora::gpt2 {

/// GPT-2's pre-tokenisation pattern, verbatim.
extern const char* const kGpt2PreTokenizerPattern;

/// The consecutive matches of the pattern in `text` (views into it), which
/// cover all of it. Throws c10::Error for invalid UTF-8, naming the byte
/// offset of the first bad sequence.
std::vector<std::string_view> pre_tokenize_views(std::string_view text);

/// Whether PCRE2 JIT-compiled the pattern (else its interpreter runs it).
bool pre_tokenizer_uses_jit();

} // namespace flora::gpt2
