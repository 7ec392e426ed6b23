#pragma once

// Which tensor of each parameter is exchanged and in which flat bucket, decided
// from shapes and dtypes alone, so every rank derives the same plan (the
// agreement check compares its inputs) and byte counts need no tensors.

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

namespace flora::distributed::detail {

/// What one parameter contributes to an exchange.
struct ExchangeItem {
  /// Shape of the exchanged tensor: the sketch's or the gradient's.
  std::vector<int64_t> shape;
  c10::ScalarType dtype = c10::kFloat;
};

struct PlannedEntry {
  int64_t bucket = 0;
  /// First element of this item in its bucket's flat tensor.
  int64_t offset = 0;
  int64_t numel = 0;
  /// Index among its bucket's items (its presence flag's place).
  int64_t position = 0;
};

struct PlannedBucket {
  /// Items in the order they sit in the flat tensor.
  std::vector<int64_t> items;
  c10::ScalarType dtype = c10::kFloat;
  /// Data elements; one presence flag per item follows them (the sum over
  /// ranks tells whether any rank had this item at all).
  int64_t numel = 0;
  int64_t flat_numel() const {
    return numel + static_cast<int64_t>(items.size());
  }
};

struct ExchangePlan {
  std::vector<PlannedEntry> entries; // one per item, in item order
  std::vector<PlannedBucket> buckets; // in launch order
  int64_t bytes() const;
};

/// Buckets of at most `bucket_bytes` (an item larger than that gets a bucket
/// of its own), one dtype each, filled in reverse item order: backward
/// produces the last layers' gradients first, so the first bucket fills
/// first (DDP's assignment). Buckets are ordered by their first item.
ExchangePlan plan_exchange(const std::vector<ExchangeItem>& items, int64_t bucket_bytes);

} // namespace flora::distributed::detail
