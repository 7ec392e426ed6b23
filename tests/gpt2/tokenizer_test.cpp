// The byte-level BPE tokenizer against Hugging Face's GPT2Tokenizer
// (tests/fixtures/gpt2/tokenizer_cases.json).

#include "gpt2_test_util.h"

#include "file_io.h"
#include "tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace flora::gpt2 {
namespace {

using testing::expect_error;

const Tokenizer& tiny_tokenizer() {
  static const Tokenizer tokenizer = Tokenizer::from_dir(testing::tiny_model_dir());
  return tokenizer;
}

std::string describe(const std::vector<int64_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(ids[i]);
  }
  return s + "]";
}

TEST(Gpt2Tokenizer, MatchesEveryFixtureCase) {
  const auto cases = nlohmann::json::parse(read_file(testing::fixture("tokenizer_cases.json")));
  ASSERT_EQ(cases.size(), 28u);
  const auto& tok = tiny_tokenizer();
  for (const auto& c : cases) {
    const std::string text = c["text"];
    const auto want = c["ids"].get<std::vector<int64_t>>();
    const auto got = tok.encode(text);
    EXPECT_EQ(got, want) << "text: '" << text << "'\n got " << describe(got) << "\nwant " << describe(want);
    EXPECT_EQ(tok.decode(want), c["decoded"].get<std::string>()) << "text: '" << text << "'";
    EXPECT_EQ(tok.decode(want), text);
  }
}

TEST(Gpt2Tokenizer, VocabularyAndSpecialToken) {
  const auto& tok = tiny_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.eos_id(), 511);
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 511);
  EXPECT_EQ(tok.id_to_token(511), "<|endoftext|>");
  EXPECT_EQ(tok.token_to_id("not a token"), -1);
  ASSERT_EQ(tok.special_tokens().size(), 1u);
  // A special token at the very start and end, twice in a row.
  EXPECT_EQ(tok.encode("<|endoftext|><|endoftext|>"), (std::vector<int64_t>{511, 511}));
  // Half a special token is ordinary text.
  const auto partial = tok.encode("<|endoftext");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), 511), 0);
  EXPECT_EQ(tok.decode(partial), "<|endoftext");
}

TEST(Gpt2Tokenizer, BytesToUnicode) {
  EXPECT_EQ(Tokenizer::byte_symbol(' '), "\u0120");  // Ġ
  EXPECT_EQ(Tokenizer::byte_symbol('\n'), "\u010A"); // Ċ
  EXPECT_EQ(Tokenizer::byte_symbol('A'), "A");
  EXPECT_EQ(Tokenizer::byte_symbol(0xA1), "\u00A1");
  EXPECT_EQ(Tokenizer::byte_symbol(0xAD), "\u0143"); // the soft hyphen is remapped
  EXPECT_EQ(Tokenizer::byte_symbol(0x00), "\u0100");
  EXPECT_EQ(Tokenizer::byte_symbol(0x7F), "\u0121");
}

TEST(Gpt2Tokenizer, PreTokenizerFollowsGpt2Regex) {
  using V = std::vector<std::string>;
  EXPECT_EQ(Tokenizer::pre_tokenize("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(Tokenizer::pre_tokenize("don't they're I'LL"), (V{"don", "'t", " they", "'re", " I", "'", "LL"}));
  EXPECT_EQ(Tokenizer::pre_tokenize("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(Tokenizer::pre_tokenize("a   "), (V{"a", "   "}));
  EXPECT_EQ(Tokenizer::pre_tokenize("x\n\ny"), (V{"x", "\n", "\n", "y"}));
  EXPECT_EQ(Tokenizer::pre_tokenize("3.50 1,234"), (V{"3", ".", "50", " 1", ",", "234"}));
  EXPECT_EQ(Tokenizer::pre_tokenize("''' \"\"\"!?"), (V{"'''", " \"\"\"!?"}));
  EXPECT_EQ(Tokenizer::pre_tokenize("caf\u00e9 e\u0301"), (V{"caf\u00e9", " e", "\u0301"}));
  EXPECT_EQ(Tokenizer::pre_tokenize("\u6771\u4eac\u3002"), (V{"\u6771\u4eac", "\u3002"}));
  EXPECT_EQ(Tokenizer::pre_tokenize("a\u00a0b"), (V{"a", "\u00a0", "b"}));
  EXPECT_EQ(Tokenizer::pre_tokenize(""), V{});
}

TEST(Gpt2Tokenizer, WritesVocabularyFilesLikeHuggingFace) {
  const auto& tok = tiny_tokenizer();
  EXPECT_EQ(tok.vocab_json(), read_file(testing::tiny_model_dir() + "/vocab.json"));
  EXPECT_EQ(tok.merges_txt(), read_file(testing::tiny_model_dir() + "/merges.txt"));
  testing::TempDir dir;
  tok.save(dir.path());
  const auto again = Tokenizer::from_dir(dir.path());
  const std::string text = "The naïve tourist's 42 croissants<|endoftext|>";
  EXPECT_EQ(again.encode(text), tok.encode(text));
}

TEST(Gpt2Tokenizer, DecodeReplacesInvalidUtf8LikePython) {
  const auto& tok = tiny_tokenizer();
  // Byte tokens: the ids of single bytes come from their symbols.
  auto id_of_byte = [&](uint8_t b) { return tok.token_to_id(Tokenizer::byte_symbol(b)); };
  // A lone lead byte, then ASCII.
  EXPECT_EQ(tok.decode({id_of_byte(0xC3), id_of_byte('a')}), "\uFFFDa");
  // A truncated 3-byte sequence is one replacement character (maximal subpart).
  EXPECT_EQ(tok.decode({id_of_byte(0xE6), id_of_byte(0x9D)}), "\uFFFD");
  // A stray continuation byte.
  EXPECT_EQ(tok.decode({id_of_byte(0x80), id_of_byte(0x80)}), "\uFFFD\uFFFD");
  // An encoded surrogate (ED A0 80) is three errors in Python.
  EXPECT_EQ(tok.decode({id_of_byte(0xED), id_of_byte(0xA0), id_of_byte(0x80)}), "\uFFFD\uFFFD\uFFFD");
}

// Invalid UTF-8 is an error naming the offset of the first bad byte, in
// encode() and pre_tokenize() alike, wherever it sits in the text.
TEST(Gpt2Tokenizer, RejectsInvalidUtf8AtItsOffset) {
  const auto& tok = tiny_tokenizer();
  const std::string before = "A na\u00efve caf\u00e9 \u6771\u4eac ";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"\x80", "lone continuation byte"},
      {"\xff", "0xff"},
      {"\xc3(", "lead byte before ASCII"},
      {"\xc0\xaf", "overlong '/'"},
      {"\xed\xa0\x80", "surrogate U+D800"},
      {"\xf4\x90\x80\x80", "above U+10FFFF"},
      {"\xe6\x9d", "truncated at the end"},
  };
  for (const auto& [bytes, what] : bad) {
    for (const std::string& prefix : {std::string(), before}) {
      const std::string text = prefix + bytes + (what == "truncated at the end" ? "" : " and more text");
      const std::string want = "invalid UTF-8 at byte offset " + std::to_string(prefix.size()) + ":";
      expect_error([&] { tok.encode(text); }, want);
      expect_error([&] { Tokenizer::pre_tokenize(text); }, want);
    }
  }
}

// The pieces tile the text, also for long runs of one class (the regex
// backtracks over a run of white space).
TEST(Gpt2Tokenizer, PiecesCoverTheText) {
  const std::string corpus = read_file(testing::example_file("data/valid.txt"));
  std::string joined;
  for (const auto& piece : Tokenizer::pre_tokenize(corpus)) {
    joined += piece;
  }
  EXPECT_EQ(joined, corpus);
  const std::string spaces(1 << 20, ' ');
  using V = std::vector<std::string>;
  EXPECT_EQ(Tokenizer::pre_tokenize(spaces + "x"), (V{spaces.substr(1), " x"}));
  EXPECT_EQ(Tokenizer::pre_tokenize(std::string(1 << 20, 'a')).size(), 1u);
  EXPECT_EQ(Tokenizer::pre_tokenize(std::string(1 << 20, '!')).size(), 1u);
}

TEST(Gpt2Tokenizer, Errors) {
  const auto& tok = tiny_tokenizer();
  expect_error([&] { tok.decode({512}); }, "unknown id 512");
  expect_error([&] { tok.decode({-1}); }, "unknown id -1");
  testing::TempDir dir;
  write_file_atomic(dir.file("vocab.json"), "{\"a\": 0, \"b\": 1}");
  write_file_atomic(dir.file("merges.txt"), "#version: 0.2\na b c\n");
  expect_error([&] { Tokenizer::from_dir(dir.path()); }, "merges.txt:2: expected two tokens");
  write_file_atomic(dir.file("vocab.json"), "{\"a\": 0,");
  expect_error([&] { Tokenizer::from_dir(dir.path()); }, "malformed JSON");
  write_file_atomic(dir.file("vocab.json"), "{\"a\": 0, \"b\": 0}");
  write_file_atomic(dir.file("merges.txt"), "#version: 0.2\n");
  expect_error([&] { Tokenizer::from_dir(dir.path()); }, "is used by two tokens");
}

} // namespace
} // namespace flora::gpt2
