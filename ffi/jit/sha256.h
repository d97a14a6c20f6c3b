// SHA-256 (FIPS 180-4) for cache keys and cubin integrity checks; no external dependency.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dgpt::jit {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(const std::string& data) { update(data.data(), data.size()); }
  // Feeds a length prefix and then the bytes, so consecutive fields cannot run into each other.
  void update_field(const std::string& data);
  // Finishes the hash and returns 64 lowercase hex digits; the object must not be updated again.
  std::string hex_digest();

 private:
  void compress(const uint8_t* block);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// One-shot digest of `data` as 64 lowercase hex digits.
std::string sha256_hex(const std::string& data);

}  // namespace dgpt::jit
