#include "archive_tree.h"

#include <torch/torch.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace flora::fuzz {

ArchiveNode read_archive(torch::serialize::InputArchive& archive) {
  ArchiveNode node;
  node.kind = ArchiveNode::Kind::archive;
  for (const auto& key : archive.keys()) {
    ArchiveNode child;
    c10::IValue value;
    archive.read(key, value);
    if (value.isObject()) {
      torch::serialize::InputArchive nested;
      archive.read(key, nested);
      child = read_archive(nested);
    } else if (value.isTensor()) {
      // Parameters and buffers are both tensors to read(IValue): the
      // tensor reader tells them apart.
      child.value = value;
      const auto reads_as = [&](bool buffer) {
        try {
          torch::Tensor t;
          return archive.try_read(key, t, buffer);
        } catch (const c10::Error&) { // "expected ... to be a buffer"
          return false;
        }
      };
      child.kind = reads_as(false) ? ArchiveNode::Kind::parameter
          : reads_as(true)        ? ArchiveNode::Kind::buffer
                                  : ArchiveNode::Kind::value;
    } else {
      child.kind = ArchiveNode::Kind::value;
      child.value = value;
    }
    node.children.emplace_back(key, std::move(child));
  }
  return node;
}

ArchiveNode read_archive_file(const std::string& path) {
  torch::serialize::InputArchive archive;
  archive.load_from(path);
  return read_archive(archive);
}

void write_archive(const ArchiveNode& node, torch::serialize::OutputArchive& archive) {
  for (const auto& [key, child] : node.children) {
    switch (child.kind) {
      case ArchiveNode::Kind::value:
        archive.write(key, child.value);
        break;
      case ArchiveNode::Kind::parameter:
        archive.write(key, child.value.toTensor(), /*is_buffer=*/false);
        break;
      case ArchiveNode::Kind::buffer:
        archive.write(key, child.value.toTensor(), /*is_buffer=*/true);
        break;
      case ArchiveNode::Kind::archive: {
        torch::serialize::OutputArchive nested(archive.compilation_unit());
        write_archive(child, nested);
        archive.write(key, nested);
        break;
      }
    }
  }
}

std::string archive_bytes(const ArchiveNode& root) {
  torch::serialize::OutputArchive archive;
  write_archive(root, archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

std::string canonical(const ArchiveNode& node) {
  std::vector<std::string> entries;
  for (const auto& [key, child] : node.children) {
    std::ostringstream out;
    out << key << ':' << static_cast<int>(child.kind) << '=';
    if (child.kind == ArchiveNode::Kind::archive) {
      out << '{' << canonical(child) << '}';
    } else if (child.value.isTensor()) {
      const auto t = child.value.toTensor().detach().cpu();
      out << "tensor(" << t.scalar_type() << ',' << t.sizes() << ',';
      const auto c = (t.is_sparse() ? t.to_dense() : t).contiguous();
      const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
      for (size_t i = 0; i < c.nbytes(); ++i) {
        out << static_cast<int>(bytes[i]) << ' ';
      }
      out << ')';
    } else {
      out << child.value.tagKind() << ':' << child.value;
    }
    entries.push_back(out.str());
  }
  std::sort(entries.begin(), entries.end());
  std::string all;
  for (const auto& e : entries) {
    all += e + ';';
  }
  return all;
}

std::string canonical_bytes(const std::string& archive_bytes) {
  torch::serialize::InputArchive archive;
  archive.load_from(archive_bytes.data(), archive_bytes.size());
  return canonical(read_archive(archive));
}

bool same_tensor(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) {
    return false;
  }
  if (!a.defined()) {
    return true;
  }
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes() || a.is_sparse() != b.is_sparse() ||
      a.device() != b.device()) {
    return false;
  }
  if (a.is_sparse()) {
    return same_tensor(a.to_dense(), b.to_dense());
  }
  const auto bytes = [](const torch::Tensor& t) {
    auto c = t.detach().cpu().contiguous();
    return c.is_complex() ? torch::view_as_real(c).flatten().view(torch::kByte)
                          : c.flatten().view(torch::kByte);
  };
  if (a.numel() == 0) {
    return true;
  }
  if (a.scalar_type() == torch::kBool) {
    return torch::equal(a.cpu(), b.cpu());
  }
  return torch::equal(bytes(a), bytes(b));
}

namespace {

struct Ref {
  ArchiveNode* parent;
  size_t index;
  std::pair<std::string, ArchiveNode>& entry() const {
    return parent->children[index];
  }
};

void collect(ArchiveNode& node, std::vector<Ref>& refs, std::vector<ArchiveNode*>& archives) {
  archives.push_back(&node);
  for (size_t i = 0; i < node.children.size(); ++i) {
    refs.push_back({&node, i});
    if (node.children[i].second.kind == ArchiveNode::Kind::archive) {
      collect(node.children[i].second, refs, archives);
    }
  }
}

int64_t interesting_int(ByteReader& in, int64_t current) {
  static const int64_t values[] = {
      0, 1, -1, 2, 3, 4, 5, 6, 7, 8, 16, 1000, 4096, -2,
      std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(), int64_t{1} << 31, int64_t{1} << 32,
      int64_t{1} << 40, int64_t{1} << 62, std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max() - 1,
      std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::min() + 1};
  switch (in.below(4)) {
    case 0:
      return values[in.below(sizeof(values) / sizeof(values[0]))];
    case 1: // a small step from the current value (wrapping, as the bits would)
      return static_cast<int64_t>(static_cast<uint64_t>(current) + static_cast<uint64_t>(int64_t{in.u8()} - 128));
    case 2:
      return static_cast<int64_t>(in.u64());
    default: // the negation, wrapping (-INT64_MIN is INT64_MIN, as the bits would; UBSan found the signed one)
      return static_cast<int64_t>(uint64_t{0} - static_cast<uint64_t>(current));
  }
}

double interesting_double(ByteReader& in, double current) {
  static const double values[] = {
      0.0, -0.0, 1.0, -1.0, 0.5, 0.9, 0.999999, 1.0 - 1e-16, 1.0 + 1e-15, 1e-30, 1e-3, 4.0, 1e308, -1e308,
      std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
      std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::denorm_min(),
      std::numeric_limits<double>::min(), 1e-45, 3.4e38, 1e39, -0.8, 2.0};
  switch (in.below(3)) {
    case 0:
      return values[in.below(sizeof(values) / sizeof(values[0]))];
    case 1:
      return in.f64();
    default:
      return current * (in.flag() ? 2.0 : -0.5);
  }
}

torch::ScalarType pick_dtype(ByteReader& in) {
  static const torch::ScalarType types[] = {
      torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16, torch::kByte, torch::kChar,
      torch::kInt, torch::kLong, torch::kBool, torch::kComplexFloat, torch::kShort};
  return types[in.below(sizeof(types) / sizeof(types[0]))];
}

// A small tensor of the given shape and dtype, values from the input.
// (A generator seeded from the input: an input must make the same tensor
// every time it runs, or a crash input would not reproduce.)
torch::Tensor small_tensor(ByteReader& in, std::vector<int64_t> shape, torch::ScalarType dtype) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(in.u8());
  auto t = torch::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat)) * static_cast<double>(in.u8() + 1) / 16.0;
  return t.to(dtype);
}

std::vector<int64_t> small_shape(ByteReader& in) {
  std::vector<int64_t> shape;
  const size_t dims = in.below(5);
  for (size_t d = 0; d < dims; ++d) {
    shape.push_back(static_cast<int64_t>(in.below(d == 0 ? 41 : 13)));
  }
  return shape;
}

// Writes special values at a few positions of a copy of `t`.
torch::Tensor corrupt_values(const torch::Tensor& t, ByteReader& in) {
  if (t.numel() == 0) {
    return t;
  }
  auto c = t.detach().clone().contiguous();
  auto flat = c.view(-1);
  const size_t count = 1 + in.below(4);
  for (size_t k = 0; k < count; ++k) {
    const auto at = static_cast<int64_t>(in.below(static_cast<size_t>(flat.numel())));
    // Through a tensor conversion, as for integers below: a double beyond
    // the dtype's range becomes inf (assigning the scalar would throw
    // std::runtime_error "cannot be converted ... without overflow").
    if (c.is_floating_point()) {
      flat[at].copy_(torch::full({}, interesting_double(in, flat[at].item<double>()), torch::kDouble));
    } else if (c.is_complex()) {
      flat[at].copy_(torch::full(
          {}, c10::complex<double>(interesting_double(in, 0.0), interesting_double(in, 0.0)), torch::kComplexDouble));
    } else if (c.scalar_type() == torch::kBool) {
      flat[at] = in.flag();
    } else {
      // Out-of-range values wrap into the dtype as bits would (a conversion
      // of tensors; assigning the scalar would refuse them).
      flat[at].copy_(torch::full({}, interesting_int(in, flat[at].item<int64_t>()), torch::kLong).to(c.scalar_type()));
    }
  }
  return c;
}

torch::Tensor reshape_tensor(const torch::Tensor& t, ByteReader& in) {
  auto sizes = t.sizes().vec();
  switch (in.below(8)) {
    case 0:
      return t.flatten();
    case 1:
      return t.unsqueeze(0);
    case 2:
      return t.unsqueeze(-1);
    case 3: // one row of everything
      return t.reshape({1, t.numel()});
    case 4: // one row fewer
      return t.dim() > 0 && t.size(0) > 0 ? t.narrow(0, 0, t.size(0) - 1).clone() : t;
    case 5: // one row more
      if (t.dim() > 0) {
        auto sizes_row = sizes;
        sizes_row[0] = 1;
        return torch::cat({t, torch::zeros(sizes_row, t.options())}, 0);
      }
      return t.reshape({1});
    case 6: // the transposed shape (as a wrongly oriented matrix would be)
      if (t.dim() == 2) {
        return t.t().contiguous();
      }
      return t.numel() == 1 ? t.reshape({}) : t.flatten();
    default:
      return small_tensor(in, small_shape(in), t.scalar_type());
  }
}

// The same values in another memory layout: strided views, offsets into a
// larger storage, zero strides, sparse. All of them are written by torch's
// writer as they are (a storage plus sizes, strides and offset).
torch::Tensor relayout_tensor(const torch::Tensor& t, ByteReader& in) {
  switch (in.below(5)) {
    case 0: // transposed strides
      return t.dim() == 2 ? t.t().contiguous().t() : t;
    case 1: { // a view at an offset into a larger storage
      auto big = torch::cat({torch::zeros({3}, t.options()), t.flatten(), torch::zeros({2}, t.options())});
      return big.narrow(0, 3, t.numel()).view(t.sizes());
    }
    case 2: // every element one storage element (stride 0)
      return t.numel() > 0 ? t.flatten().narrow(0, 0, 1).reshape(std::vector<int64_t>(t.dim(), 1)).expand(t.sizes()) : t;
    case 3:
      if (t.dim() > 0 && !t.is_complex() && t.scalar_type() != torch::kBool) {
        return t.to_sparse();
      }
      return t;
    default:
      return t.is_floating_point() ? t.detach().clone().requires_grad_(true) : t;
  }
}

c10::IValue new_value(ByteReader& in, const ArchiveNode& like) {
  switch (in.below(9)) {
    case 0:
      return c10::IValue();
    case 1:
      return c10::IValue(in.flag());
    case 2:
      return c10::IValue(interesting_int(in, 0));
    case 3:
      return c10::IValue(interesting_double(in, 1.0));
    case 4: {
      static const char* strings[] = {"", "philox", "reference", "0", "1", "param_groups", "0x0", "state"};
      return c10::IValue(std::string(strings[in.below(8)]));
    }
    case 5:
      return c10::IValue(small_tensor(in, small_shape(in), pick_dtype(in)));
    case 6:
      return c10::IValue(c10::List<int64_t>({interesting_int(in, 0), interesting_int(in, 1)}));
    case 7:
      return c10::IValue(std::make_tuple(interesting_int(in, 0), std::string("x")));
    default:
      return like.value.isTensor() ? c10::IValue(like.value.toTensor().sum()) : c10::IValue(std::string("?"));
  }
}

std::string new_name(ByteReader& in, const std::vector<Ref>& refs) {
  static const char* names[] = {"0", "1", "2", "size", "params/size", "params/0", "params/1", "step", "seed",
                                "exp_avg", "exp_avg_sq", "rms", "exp_avg_absmax", "flora_format", "state",
                                "param_groups", "options", "lr", "rank", "kappa", "buffer/0", "seed/0",
                                "flora_accumulator", "flora_synchronizer", "mode", "beta1", "quantization"};
  if (!refs.empty() && in.flag()) {
    return refs[in.below(refs.size())].entry().first;
  }
  return names[in.below(sizeof(names) / sizeof(names[0]))];
}

void edit(ArchiveNode& root, ByteReader& in) {
  std::vector<Ref> refs;
  std::vector<ArchiveNode*> archives;
  collect(root, refs, archives);
  if (refs.empty()) {
    return;
  }
  const Ref ref = refs[in.below(refs.size())];
  auto& [name, node] = ref.entry();
  switch (in.below(12)) {
    case 0: // drop the entry
      ref.parent->children.erase(ref.parent->children.begin() + static_cast<std::ptrdiff_t>(ref.index));
      return;
    case 1: { // copy it (under a new name, somewhere)
      auto copy = ref.entry();
      copy.first = new_name(in, refs);
      auto* target = archives[in.below(archives.size())];
      target->children.push_back(std::move(copy));
      return;
    }
    case 2: // rename it
      name = new_name(in, refs);
      return;
    case 3: { // swap it with another entry's contents
      const Ref other = refs[in.below(refs.size())];
      // Two values, or two entries of one archive: never a node with one of
      // its ancestors or descendants.
      const bool leaves =
          node.kind != ArchiveNode::Kind::archive && other.entry().second.kind != ArchiveNode::Kind::archive;
      if (&other.entry().second != &node && (leaves || other.parent == ref.parent)) {
        auto tmp = std::move(node);
        node = std::move(other.entry().second);
        other.entry().second = std::move(tmp);
      }
      return;
    }
    case 4: // another value altogether
      node.value = new_value(in, node);
      node.children.clear();
      node.kind = node.value.isTensor() && in.flag() ? ArchiveNode::Kind::parameter : ArchiveNode::Kind::value;
      return;
    case 5: // an empty nested archive, or a parameter/buffer/value kind change
      if (node.kind == ArchiveNode::Kind::archive || in.flag()) {
        node = ArchiveNode();
        node.kind = ArchiveNode::Kind::archive;
      } else if (node.value.isTensor()) {
        node.kind = static_cast<ArchiveNode::Kind>(in.below(3));
      }
      return;
    default:
      break;
  }
  // Edits of the value itself.
  if (node.kind == ArchiveNode::Kind::archive) {
    if (!node.children.empty()) { // reorder (entries are looked up by name: order must not matter)
      std::swap(node.children.front(), node.children.back());
    }
    return;
  }
  auto& v = node.value;
  if (v.isInt()) {
    v = interesting_int(in, v.toInt());
  } else if (v.isDouble()) {
    v = interesting_double(in, v.toDouble());
  } else if (v.isBool()) {
    v = !v.toBool();
  } else if (v.isString()) {
    auto s = v.toStringRef();
    if (in.flag() && !s.empty()) {
      s.resize(in.below(s.size()));
    } else {
      s += static_cast<char>('0' + in.below(10));
    }
    v = s;
  } else if (v.isTensor()) {
    auto t = v.toTensor();
    switch (in.below(4)) {
      case 0:
        t = t.to(pick_dtype(in));
        break;
      case 1:
        t = reshape_tensor(t, in);
        break;
      case 2:
        t = t.is_sparse() ? t : corrupt_values(t, in);
        break;
      default:
        t = t.is_sparse() ? t : relayout_tensor(t, in);
        break;
    }
    v = t;
    if (t.is_sparse() || t.requires_grad()) {
      node.kind = ArchiveNode::Kind::value; // only dense, grad-free tensors are parameters here
    }
  } else if (v.isNone()) {
    v = new_value(in, node);
  }
}

} // namespace

void mutate_archive(ArchiveNode& root, ByteReader& in, int max_edits) {
  torch::NoGradGuard no_grad;
  const int edits = 1 + static_cast<int>(in.below(static_cast<size_t>(max_edits)));
  for (int i = 0; i < edits && !in.empty(); ++i) {
    // An edit that the tensor library refuses to make (a shape that does not
    // fit, a conversion it does not have) is skipped: what is tested is the
    // loader, not the mutator (value edits build a new tensor before they
    // assign it, so a refused one changes nothing).
    try {
      edit(root, in);
    } catch (const c10::Error&) {
    }
  }
}

} // namespace flora::fuzz
