#pragma once

// GPT-2's byte-level BPE tokenizer, as Hugging Face's GPT2Tokenizer:
//
//  1. Special tokens (e.g. "<|endoftext|>") found in the text are cut out
//     first and become their single id; the text between them is encoded
//     independently.
//  2. Pre-tokenisation with GPT-2's regex, run by PCRE2 (pretokenizer.h).
//  3. Each piece's UTF-8 bytes are mapped to printable characters
//     (bytes_to_unicode: a space becomes "Ġ", a newline "Ċ", ...), then
//     merged by BPE: repeatedly merge the adjacent pair with the lowest rank
//     in merges.txt. Results are cached per piece.
//  4. Decoding maps tokens back to bytes and decodes UTF-8, replacing
//     invalid sequences with U+FFFD as Python's errors="replace" does.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace flora::gpt2 {

class Tokenizer {
 public:
  /// Builds a tokenizer from a vocabulary (token -> id), the merges in rank
  /// order, and special tokens (content -> id; a content missing from
  /// `vocab` is added to it).
  Tokenizer(
      std::map<std::string, int64_t> vocab,
      std::vector<std::pair<std::string, std::string>> merges,
      std::map<std::string, int64_t> special_tokens);

  /// Reads vocab.json and merges.txt. Special tokens: the
  /// "added_tokens_decoder" of tokenizer_config_json (if the path is not
  /// empty and the file exists), else "<|endoftext|>" if it is in the vocab.
  static Tokenizer from_files(
      const std::string& vocab_json,
      const std::string& merges_txt,
      const std::string& tokenizer_config_json = "");
  /// from_files(dir/vocab.json, dir/merges.txt, dir/tokenizer_config.json).
  static Tokenizer from_dir(const std::string& dir);

  std::vector<int64_t> encode(std::string_view text) const;
  std::string decode(const std::vector<int64_t>& ids) const;

  /// The pieces of GPT-2's pre-tokenisation regex (no special-token
  /// handling), as UTF-8 strings. Throws on invalid UTF-8 (naming the byte
  /// offset), as encode() does.
  static std::vector<std::string> pre_tokenize(std::string_view text);
  /// The printable character (UTF-8) that stands for byte b.
  static const std::string& byte_symbol(uint8_t b);

  /// 1 + the largest id.
  int64_t vocab_size() const {
    return static_cast<int64_t>(id_to_token_.size());
  }
  /// The id of a token; -1 if unknown.
  int64_t token_to_id(const std::string& token) const;
  const std::string& id_to_token(int64_t id) const;
  const std::map<std::string, int64_t>& special_tokens() const {
    return special_tokens_;
  }
  /// The id of "<|endoftext|>", or -1.
  int64_t eos_id() const;

  /// vocab.json (sorted keys, indent 2, UTF-8 unescaped, as
  /// GPT2Tokenizer.save_vocabulary) and merges.txt ("#version: 0.2" first).
  std::string vocab_json() const;
  std::string merges_txt() const;
  /// Writes dir/vocab.json and dir/merges.txt atomically.
  void save(const std::string& dir) const;

 private:
  void bpe(const std::string& piece, std::vector<int64_t>& out) const;
  void encode_ordinary(std::string_view text, std::vector<int64_t>& out) const;

  std::map<std::string, int64_t> vocab_;      // including the special tokens
  std::map<std::string, int64_t> file_vocab_; // as given (what vocab.json holds)
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  std::vector<std::pair<std::string, std::string>> merges_;
  std::unordered_map<std::string, int> merge_ranks_; // "a b" -> rank
  std::map<std::string, int64_t> special_tokens_;
  int64_t unk_id_ = -1;

  // Piece -> ids, shared by copies (thread-safe; the values do not depend
  // on who computes them).
  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int64_t>> ids;
  };
  std::shared_ptr<Cache> cache_ = std::make_shared<Cache>();
};

} // namespace flora::gpt2
