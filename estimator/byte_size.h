// Byte counts as people read them in error messages: the exact bytes next
// to the binary size, so that a figure can be checked against a config
// (exact) and read at a glance (GiB).
#ifndef KVGATE_ESTIMATOR_BYTE_SIZE_H_
#define KVGATE_ESTIMATOR_BYTE_SIZE_H_

#include <cstdint>
#include <string>

namespace kvgate {

// "85899345920 B (80.0 GiB)", "1572864 B (1.5 MiB)", "512 B": the bytes,
// then one decimal in the largest binary unit (KiB .. EiB) that is at least
// 1; bytes under 1 KiB have no parenthesis.
std::string ByteSize(uint64_t bytes);

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_BYTE_SIZE_H_
