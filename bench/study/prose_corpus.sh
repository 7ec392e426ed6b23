#!/usr/bin/env bash
# A second corpus for the momentum study: real English prose from the
# documentation that two Debian packages install (the Debian FAQ and the
# Debian Policy Manual, both plain text), not shipped in git.
#
#   bench/study/prose_corpus.sh [OUT_DIR]     (default: build/study-corpus)
#
# Installs the packages with apt-get when their text is missing (root or
# passwordless sudo), then writes OUT_DIR/train.txt and OUT_DIR/valid.txt:
# the text's paragraphs, every 10th one held out. Idempotent: the output is
# a function of the packages' text alone, rewritten only when it differs.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-build/study-corpus}"

sources=(
  /usr/share/doc/debian/FAQ/debian-faq.en.txt.gz     # debian-faq
  /usr/share/doc/debian-policy/policy.txt.gz         # debian-policy
)
missing=()
[ -f "${sources[0]}" ] || missing+=(debian-faq)
[ -f "${sources[1]}" ] || missing+=(debian-policy)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  echo "prose_corpus.sh: installing ${missing[*]}" >&2
  # Docker-style images drop /usr/share/doc through dpkg path excludes:
  # then the text never appears, and we say so below.
  $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
fi
for f in "${sources[@]}"; do
  [ -f "$f" ] || { echo "prose_corpus.sh: $f is missing after installing its package (dpkg path-exclude of /usr/share/doc?)" >&2; exit 1; }
done

mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Paragraphs (blank-line separated), whitespace inside them collapsed to
# single spaces; paragraphs under 80 characters (headings, rules, table
# fragments) dropped, so that what remains is running text. Every 10th
# paragraph goes to valid.txt.
# (No-break spaces become spaces first: the FAQ indents with them.)
zcat "${sources[@]}" | tr -d '\r' | sed 's/\xc2\xa0/ /g' | LC_ALL=C awk -v train="$tmp/train.txt" -v valid="$tmp/valid.txt" '
  function flush() {
    gsub(/[ \t]+/, " ", para); sub(/^ /, "", para); sub(/ $/, "", para)
    if (length(para) >= 80 && para !~ /^[-=*_ ]+$/) {
      n++
      print para "\n" > ((n % 10 == 0) ? valid : train)
    }
    para = ""
  }
  /^[ \t]*$/ { flush(); next }
  { para = para " " $0 }
  END { flush() }
'
for f in train.txt valid.txt; do
  cmp -s "$tmp/$f" "$out/$f" 2>/dev/null || cp "$tmp/$f" "$out/$f"
done
wc -c "$out/train.txt" "$out/valid.txt" >&2
