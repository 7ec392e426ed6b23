#include "tokenizer.h"

#include "file_io.h"
#include "pretokenizer.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <climits>

namespace flora::gpt2 {
namespace {

// ---- UTF-8 --------------------------------------------------------------

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// bytes.decode("utf-8", errors="replace"): each maximal ill-formed
// subsequence (Unicode's "maximal subpart" rule, which Python follows)
// becomes one U+FFFD.
std::string sanitize_utf8(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  const size_t n = bytes.size();
  size_t i = 0;
  auto at = [&](size_t k) { return static_cast<unsigned char>(bytes[k]); };
  while (i < n) {
    const unsigned char b0 = at(i);
    if (b0 < 0x80) {
      out.push_back(static_cast<char>(b0));
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF; // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      lo = b0 == 0xE0 ? 0xA0 : 0x80;
      hi = b0 == 0xED ? 0x9F : 0xBF;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      lo = b0 == 0xF0 ? 0x90 : 0x80;
      hi = b0 == 0xF4 ? 0x8F : 0xBF;
    }
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    size_t valid = 1; // bytes of a valid prefix
    while (valid < len && i + valid < n) {
      const unsigned char b = at(i + valid);
      const bool ok = valid == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
      if (!ok) {
        break;
      }
      ++valid;
    }
    if (valid == len) {
      out.append(bytes, i, len);
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += valid;
  }
  return out;
}

// ---- bytes_to_unicode ----------------------------------------------------

struct ByteMap {
  std::array<std::string, 256> symbol; // byte -> UTF-8 of its printable stand-in
  std::array<int, 512> byte_of{};      // stand-in code point -> byte, -1 if none

  ByteMap() {
    byte_of.fill(-1);
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) {
      printable[b] = true;
    }
    for (int b = 0xA1; b <= 0xAC; ++b) {
      printable[b] = true;
    }
    for (int b = 0xAE; b <= 0xFF; ++b) {
      printable[b] = true;
    }
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const int cp = printable[b] ? b : next++;
      append_utf8(symbol[b], static_cast<uint32_t>(cp));
      byte_of[cp] = b;
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

const char* const kEndOfText = "<|endoftext|>";

} // namespace

// ---- Tokenizer --------------------------------------------------------------

const std::string& Tokenizer::byte_symbol(uint8_t b) {
  return byte_map().symbol[b];
}

Tokenizer::Tokenizer(
    std::map<std::string, int64_t> vocab,
    std::vector<std::pair<std::string, std::string>> merges,
    std::map<std::string, int64_t> special_tokens)
    : vocab_(vocab), file_vocab_(std::move(vocab)), merges_(std::move(merges)), special_tokens_(std::move(special_tokens)) {
  for (const auto& [content, id] : special_tokens_) {
    TORCH_CHECK(!content.empty(), "tokenizer: empty special token");
    const auto it = vocab_.find(content);
    TORCH_CHECK(
        it == vocab_.end() || it->second == id, "tokenizer: special token '", content, "' has id ", id,
        " but the vocabulary says ", it->second);
    vocab_[content] = id;
  }
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab_) {
    TORCH_CHECK(id >= 0 && id < (int64_t{1} << 31), "tokenizer: token '", token, "' has a bad id ", id);
    max_id = std::max(max_id, id);
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : vocab_) {
    TORCH_CHECK(
        !has_id_[id], "tokenizer: id ", id, " is used by two tokens ('", id_to_token_[id], "' and '", token, "')");
    has_id_[id] = true;
    id_to_token_[id] = token;
  }
  for (size_t r = 0; r < merges_.size(); ++r) {
    // A duplicated pair keeps its last rank, as GPT2Tokenizer's
    // dict(zip(merges, range(len(merges)))).
    merge_ranks_[merges_[r].first + " " + merges_[r].second] = static_cast<int>(r);
  }
  const auto eot = vocab_.find(kEndOfText);
  unk_id_ = eot == vocab_.end() ? -1 : eot->second;
}

Tokenizer Tokenizer::from_files(
    const std::string& vocab_json,
    const std::string& merges_txt,
    const std::string& tokenizer_config_json) {
  std::map<std::string, int64_t> vocab;
  {
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(read_file(vocab_json));
    } catch (const nlohmann::json::exception& e) {
      TORCH_CHECK(false, vocab_json, ": malformed JSON: ", e.what());
    }
    TORCH_CHECK(json.is_object(), vocab_json, ": expected a JSON object of token -> id");
    for (const auto& [token, id] : json.items()) {
      TORCH_CHECK(id.is_number_integer(), vocab_json, ": the id of '", token, "' is not an integer: ", id.dump());
      vocab[token] = id.get<int64_t>();
    }
  }
  std::vector<std::pair<std::string, std::string>> merges;
  {
    const std::string text = read_file(merges_txt);
    size_t pos = 0;
    int line_no = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) {
        end = text.size();
      }
      std::string line = text.substr(pos, end - pos);
      pos = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') {
        line.pop_back();
      }
      if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) {
        continue;
      }
      const auto space = line.find(' ');
      TORCH_CHECK(
          space != std::string::npos && space > 0 && space + 1 < line.size() &&
              line.find(' ', space + 1) == std::string::npos,
          merges_txt, ":", line_no, ": expected two tokens separated by one space, got '", line, "'");
      merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    }
  }
  std::map<std::string, int64_t> special;
  if (!tokenizer_config_json.empty() && is_file(tokenizer_config_json)) {
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(read_file(tokenizer_config_json));
    } catch (const nlohmann::json::exception& e) {
      TORCH_CHECK(false, tokenizer_config_json, ": malformed JSON: ", e.what());
    }
    if (json.is_object() && json.contains("added_tokens_decoder")) {
      for (const auto& [id_text, token] : json["added_tokens_decoder"].items()) {
        TORCH_CHECK(
            token.is_object() && token.contains("content") && token["content"].is_string(), tokenizer_config_json,
            ": added_tokens_decoder entry ", id_text, " has no string 'content'");
        int64_t id = -1;
        try {
          id = std::stoll(id_text);
        } catch (const std::exception&) {
          TORCH_CHECK(false, tokenizer_config_json, ": added_tokens_decoder key '", id_text, "' is not an id");
        }
        special[token["content"].get<std::string>()] = id;
      }
    }
  }
  if (special.empty() && vocab.count(kEndOfText) != 0) {
    special[kEndOfText] = vocab.at(kEndOfText);
  }
  return Tokenizer(std::move(vocab), std::move(merges), std::move(special));
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  return from_files(
      join_path(dir, "vocab.json"), join_path(dir, "merges.txt"), join_path(dir, "tokenizer_config.json"));
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) {
  const auto views = pre_tokenize_views(text);
  return std::vector<std::string>(views.begin(), views.end());
}

void Tokenizer::bpe(const std::string& piece, std::vector<int64_t>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    const auto it = cache_->ids.find(piece);
    if (it != cache_->ids.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::string> word;
  word.reserve(piece.size());
  for (const char ch : piece) {
    word.push_back(byte_symbol(static_cast<uint8_t>(ch)));
  }
  while (word.size() > 1) {
    int best = INT_MAX;
    size_t best_at = 0;
    for (size_t k = 0; k + 1 < word.size(); ++k) {
      const auto it = merge_ranks_.find(word[k] + " " + word[k + 1]);
      if (it != merge_ranks_.end() && it->second < best) {
        best = it->second;
        best_at = k;
      }
    }
    if (best == INT_MAX) {
      break;
    }
    const std::string first = word[best_at];
    const std::string second = word[best_at + 1];
    std::vector<std::string> merged;
    merged.reserve(word.size());
    for (size_t k = 0; k < word.size();) {
      if (k + 1 < word.size() && word[k] == first && word[k + 1] == second) {
        merged.push_back(first + second);
        k += 2;
      } else {
        merged.push_back(std::move(word[k]));
        ++k;
      }
    }
    word = std::move(merged);
  }
  std::vector<int64_t> ids;
  ids.reserve(word.size());
  for (const auto& token : word) {
    const auto it = vocab_.find(token);
    if (it != vocab_.end()) {
      ids.push_back(it->second);
    } else {
      TORCH_CHECK(unk_id_ >= 0, "tokenizer: BPE token '", token, "' is not in the vocabulary and there is no unk token");
      ids.push_back(unk_id_);
    }
  }
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_->mutex);
  if (cache_->ids.size() > 200000) {
    cache_->ids.clear();
  }
  cache_->ids.emplace(piece, std::move(ids));
}

void Tokenizer::encode_ordinary(std::string_view text, std::vector<int64_t>& out) const {
  for (const auto piece : pre_tokenize_views(text)) {
    bpe(std::string(piece), out);
  }
}

std::vector<int64_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 2 + 1);
  size_t pos = 0;
  while (pos < text.size()) {
    // The leftmost special token (the longest one at that position).
    size_t found = std::string_view::npos;
    const std::pair<const std::string, int64_t>* which = nullptr;
    for (const auto& entry : special_tokens_) {
      const size_t at = text.find(entry.first, pos);
      if (at != std::string_view::npos &&
          (at < found || (at == found && entry.first.size() > which->first.size()))) {
        found = at;
        which = &entry;
      }
    }
    if (which == nullptr) {
      encode_ordinary(text.substr(pos), ids);
      break;
    }
    encode_ordinary(text.substr(pos, found - pos), ids);
    ids.push_back(which->second);
    pos = found + which->first.size();
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  const auto& map = byte_map();
  std::string bytes;
  bytes.reserve(ids.size() * 4);
  for (const int64_t id : ids) {
    const std::string& token = id_to_token(id);
    if (special_tokens_.count(token) != 0) {
      bytes += token;
      continue;
    }
    // A byte-level token is a string of the 256 byte symbols, all of them
    // code points below 0x200: one or two UTF-8 bytes each.
    for (size_t i = 0; i < token.size();) {
      const auto b0 = static_cast<unsigned char>(token[i]);
      uint32_t cp = b0;
      size_t len = 1;
      if ((b0 & 0xE0) == 0xC0 && i + 1 < token.size() && (static_cast<unsigned char>(token[i + 1]) & 0xC0) == 0x80) {
        cp = ((b0 & 0x1Fu) << 6) | (static_cast<unsigned char>(token[i + 1]) & 0x3Fu);
        len = 2;
      }
      const int b = (b0 < 0x80 || len == 2) && cp < map.byte_of.size() ? map.byte_of[cp] : -1;
      TORCH_CHECK(b >= 0, "tokenizer: token ", id, " ('", token, "') is not byte-level (at byte ", i, ")");
      bytes.push_back(static_cast<char>(b));
      i += len;
    }
  }
  return sanitize_utf8(bytes);
}

int64_t Tokenizer::token_to_id(const std::string& token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string& Tokenizer::id_to_token(int64_t id) const {
  TORCH_CHECK(
      id >= 0 && id < vocab_size() && has_id_[id], "tokenizer: unknown id ", id, " (vocabulary size ", vocab_size(),
      ")");
  return id_to_token_[id];
}

int64_t Tokenizer::eos_id() const {
  return token_to_id(kEndOfText);
}

std::string Tokenizer::vocab_json() const {
  nlohmann::json json = nlohmann::json::object();
  for (const auto& [token, id] : file_vocab_) {
    json[token] = id;
  }
  return json.dump(2) + "\n";
}

std::string Tokenizer::merges_txt() const {
  std::string out = "#version: 0.2\n";
  for (const auto& [a, b] : merges_) {
    out += a + " " + b + "\n";
  }
  return out;
}

void Tokenizer::save(const std::string& dir) const {
  write_file_atomic(join_path(dir, "vocab.json"), vocab_json());
  write_file_atomic(join_path(dir, "merges.txt"), merges_txt());
}

} // namespace flora::gpt2
