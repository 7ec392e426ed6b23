#include <flora/atomic_file.h>

#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
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

} // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp-XXXXXX") {
  TORCH_CHECK(!path_.empty(), "AtomicFile: empty path");
  fd_ = ::mkstemp(tmp_.data());
  TORCH_CHECK(fd_ >= 0, "cannot create a temporary file beside '", path_, "': ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
  if (!committed_) {
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t size) {
  TORCH_CHECK(fd_ >= 0 && !committed_, "AtomicFile '", path_, "': write after commit");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    TORCH_CHECK(n > 0, "writing '", tmp_, "' (for '", path_, "') failed: ", std::strerror(errno));
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  TORCH_CHECK(fd_ >= 0 && !committed_, "AtomicFile '", path_, "': commit twice");
  // mkstemp creates mode 0600; give the file the usual permissions (umask applies).
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd_, 0666 & ~mask);
  TORCH_CHECK(::fsync(fd_) == 0, "fsync of '", tmp_, "' failed: ", std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  TORCH_CHECK(::close(fd) == 0, "closing '", tmp_, "' failed: ", std::strerror(errno));
  TORCH_CHECK(
      std::rename(tmp_.c_str(), path_.c_str()) == 0, "renaming '", tmp_, "' to '", path_, "' failed: ",
      std::strerror(errno));
  committed_ = true;
  // Make the rename itself durable.
  const int dir = ::open(parent_directory(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

void save_atomic(torch::serialize::OutputArchive& archive, const std::string& path) {
  AtomicFile file(path);
  // LibTorch's PyTorchStreamWriter writes the archive's last records (the
  // zip's central directory) from its destructor, where an exception, ours
  // or its own for a short write, ends the process (std::terminate): a full
  // disk would kill the program instead of failing the save. So the writer
  // never throws and never reports a short write: the first failure is kept,
  // later bytes are dropped, and the failure is thrown once save_to has
  // returned (the temporary file is then removed, the old file stays).
  std::exception_ptr failure;
  archive.save_to([&](const void* data, size_t size) -> size_t {
    if (!failure) {
      try {
        file.write(data, size);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    return size;
  });
  if (failure) {
    std::rethrow_exception(failure);
  }
  file.commit();
}

} // namespace flora
