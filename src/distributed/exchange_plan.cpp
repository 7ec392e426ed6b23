#include "exchange_plan.h"

#include <c10/util/Exception.h>

#include <map>

namespace flora::distributed::detail {

int64_t ExchangePlan::bytes() const {
  int64_t total = 0;
  for (const auto& b : buckets) {
    total += b.flat_numel() * static_cast<int64_t>(c10::elementSize(b.dtype));
  }
  return total;
}

ExchangePlan plan_exchange(const std::vector<ExchangeItem>& items, int64_t bucket_bytes) {
  TORCH_CHECK(bucket_bytes > 0, "flora::distributed: bucket_bytes must be positive, got ", bucket_bytes);
  ExchangePlan plan;
  plan.entries.resize(items.size());
  // The bucket being filled for each dtype.
  std::map<c10::ScalarType, int64_t> open;
  for (int64_t i = static_cast<int64_t>(items.size()) - 1; i >= 0; --i) {
    const ExchangeItem& item = items[i];
    int64_t numel = 1;
    for (const int64_t d : item.shape) {
      numel *= d;
    }
    const int64_t element = static_cast<int64_t>(c10::elementSize(item.dtype));
    auto it = open.find(item.dtype);
    if (it != open.end()) {
      const PlannedBucket& b = plan.buckets[it->second];
      if (!b.items.empty() && (b.numel + numel) * element > bucket_bytes) {
        open.erase(it);
        it = open.end();
      }
    }
    if (it == open.end()) {
      PlannedBucket b;
      b.dtype = item.dtype;
      plan.buckets.push_back(b);
      it = open.emplace(item.dtype, static_cast<int64_t>(plan.buckets.size()) - 1).first;
    }
    PlannedBucket& b = plan.buckets[it->second];
    plan.entries[i] = PlannedEntry{it->second, b.numel, numel, static_cast<int64_t>(b.items.size())};
    b.items.push_back(i);
    b.numel += numel;
  }
  // Buckets were created in the order of their first item in reverse
  // iteration, which is the launch order already.
  return plan;
}

} // namespace flora::distributed::detail
