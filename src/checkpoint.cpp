#include <flora/checkpoint.h>

#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <fcntl.h>
#include <unistd.h>

namespace flora {
namespace {

std::string parent_directory(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) {
    return ".";
  }
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Closes the descriptor and removes the temporary file unless released.
class TemporaryFile {
 public:
  explicit TemporaryFile(const std::string& target) : path_(target + ".tmp-XXXXXX") {
    fd_ = ::mkstemp(path_.data());
    TORCH_CHECK(fd_ >= 0, "save_atomic: cannot create a temporary file beside '", target, "': ", std::strerror(errno));
  }
  ~TemporaryFile() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    if (!committed_) {
      ::unlink(path_.c_str());
    }
  }
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;

  void write(const void* data, size_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, size);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      TORCH_CHECK(n > 0, "save_atomic: writing '", path_, "' failed: ", std::strerror(errno));
      p += n;
      size -= static_cast<size_t>(n);
    }
  }

  void commit(const std::string& target) {
    TORCH_CHECK(::fsync(fd_) == 0, "save_atomic: fsync of '", path_, "' failed: ", std::strerror(errno));
    TORCH_CHECK(::close(fd_) == 0, "save_atomic: closing '", path_, "' failed: ", std::strerror(errno));
    fd_ = -1;
    TORCH_CHECK(
        std::rename(path_.c_str(), target.c_str()) == 0, "save_atomic: renaming '", path_, "' to '", target,
        "' failed: ", std::strerror(errno));
    committed_ = true;
    // Make the rename itself durable.
    const int dir = ::open(parent_directory(target).c_str(), O_RDONLY | O_DIRECTORY);
    if (dir >= 0) {
      ::fsync(dir);
      ::close(dir);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

} // namespace

void save_atomic(torch::serialize::OutputArchive& archive, const std::string& path) {
  TORCH_CHECK(!path.empty(), "save_atomic: empty path");
  TemporaryFile file(path);
  archive.save_to([&](const void* data, size_t size) -> size_t {
    file.write(data, size);
    return size;
  });
  file.commit(path);
}

} // namespace flora
