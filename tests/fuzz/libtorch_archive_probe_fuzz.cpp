// Not one of flora's targets: the probe that answers whether LibTorch's own
// archive reader (torch::serialize::InputArchive::load_from: the zip reader,
// the unpickler, the TorchScript type importer) survives arbitrary bytes. It
// feeds the input straight to it, seeded with the checkpoint fixtures. Built
// with the fuzz targets, run by hand (scripts/fuzz.sh probe), never in CI;
// tests/fuzz/README.md says why flora's checkpoint targets edit archives
// instead of bytes (the bytes are LibTorch's format, parsed by LibTorch).

#include "fuzz_target.h"

#include <torch/serialize.h>

FLORA_FUZZ_TARGET(libtorch_archive_probe) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(reinterpret_cast<const char*>(data), size);
    for (const auto& key : archive.keys()) {
      c10::IValue value;
      archive.read(key, value);
    }
  } catch (const c10::Error&) {
  } catch (const std::exception&) {
    // Anything LibTorch throws is fine here: the question is whether it crashes.
  }
  return 0;
}
